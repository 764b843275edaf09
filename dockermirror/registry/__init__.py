"""The pull domain: registries as plain values, the upstream one and the cache that wraps it.

No HTTP request is seen here; :mod:`dockermirror.web` renders what this returns.
"""
