"""dockermirror: a pull-through registry mirror for Docker Hub and other OCI registries."""

__version__ = "0.1.0"
