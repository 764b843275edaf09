"""twistd plugin: `twistd dockermirror`. Kept tiny so `twistd --help` imports nothing heavy."""

from twisted.application.service import ServiceMaker

dockermirror = ServiceMaker(
    "dockermirror",
    "dockermirror.tap",
    "A pull-through mirror for Docker Hub and other OCI registries.",
    "dockermirror",
)
