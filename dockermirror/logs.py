"""Log observers an operator can pick with ``twistd --logger``."""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """``twistd -n --logger=dockermirror.logs.json_observer``: one JSON event per line on
    stdout (no record separator: each line is JSON as it stands, for log shippers)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
