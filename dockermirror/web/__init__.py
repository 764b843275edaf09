"""The HTTP server side: routes, rendering, errors, the site and the usage page.

The only package that knows Klein and Twisted's web server.
"""
