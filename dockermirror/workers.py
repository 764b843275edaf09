"""``--workers N``: more processes serving the same listening sockets, to use every core.

The process twistd starts is worker 0: it listens, owns the cache directory
(clears what a crash left, evicts, scrubs), runs the prefetch and the metrics
listener.  It starts N-1 more workers, each a twistd of its own: on a TCP port
each worker listens itself with ``SO_REUSEPORT`` and the kernel spreads new
connections evenly; other sockets (UNIX, systemd's) are passed on to them as
systemd passes sockets (``LISTEN_FDS``, ``--port systemd:...``) and shared.  They
share the cache directory: the SQLite index is safe for several processes, and
a blob downloading in one worker is followed by the others rather than fetched
again (:mod:`dockermirror.storage.sharing`).

A worker that dies is started again (after a pause that grows while it keeps
dying); stopping the mirror stops them all.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from dockermirror.listening import Listener
from dockermirror.startup import StartupError

log = Logger()

# The systemd convention: passed sockets start at descriptor 3.
FIRST_FD = 3
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# How long a worker may take to stop before it is killed.
STOP_GRACE = 10.0
# sh sets LISTEN_PID to its own pid, which exec keeps: the pid the worker checks it against.
_EXEC_WITH_PID = 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"'


def twistd_options(argv: Sequence[str]) -> list[str]:
    """twistd's own options before the ``dockermirror`` subcommand, for a worker: in the
    foreground, with no pid file (the first worker's is the mirror's)."""
    options = list(argv[1 : argv.index("dockermirror")]) if "dockermirror" in argv else []
    dropped = {"-n", "--nodaemon", "-y", "--python"}
    kept = []
    for option in options:
        if option in dropped or option.startswith(("--pidfile", "--python=")):
            continue
        kept.append(option)
    return [*kept, "--nodaemon", "--pidfile="]


class WorkerProcesses(Service):
    """Workers 1..N-1, started once the listeners listen and kept running."""

    def __init__(
        self,
        reactor: Any,
        listeners: Sequence[Listener],
        count: int,
        plugin_arguments: Sequence[str],
        twistd_arguments: Sequence[str],
    ) -> None:
        self._reactor = reactor
        self._listeners = listeners
        self._count = count
        self._plugin_arguments = list(plugin_arguments)
        self._twistd_arguments = list(twistd_arguments)
        self._sockets: list[tuple[int, str]] = []
        # Ports every worker listens on itself (SO_REUSEPORT).
        self._addresses: list[str] = []
        self._workers: dict[int, _Worker] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._delays: dict[int, float] = {}

    def startService(self) -> None:
        super().startService()
        sockets: list[tuple[int, str]] = []
        for listener in self._listeners:
            address = listener.address()
            if address is not None:
                self._addresses.append(address)
                continue
            inheritable = listener.inheritable()
            if inheritable is None:
                raise StartupError(
                    f"--workers: {listener.description} cannot be shared between processes"
                    " (TLS: put a TLS proxy in front, or run one worker)"
                )
            sockets.append(inheritable)
        self._sockets = sockets
        for number in range(1, self._count):
            self._start(number)

    def _start(self, number: int) -> None:
        self._restarts.pop(number, None)
        ports = [
            *self._addresses,
            *(
                f"systemd:domain={domain}:index={index}"
                for index, (_, domain) in enumerate(self._sockets)
            ),
        ]
        arguments = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            *self._twistd_arguments,
            "dockermirror",
            *self._plugin_arguments,
            *(argument for port in ports for argument in ("--port", port)),
            "--worker",
            str(number),
        ]
        env = {
            **os.environ,
            "LISTEN_FDS": str(len(self._sockets)),
            "LISTEN_FDNAMES": ":".join(f"dockermirror{i}" for i in range(len(self._sockets))),
        }
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        for index, (fd, _) in enumerate(self._sockets):
            child_fds[FIRST_FD + index] = fd
        worker = _Worker(self, number)
        self._reactor.spawnProcess(
            worker,
            "/bin/sh",
            ["sh", "-c", _EXEC_WITH_PID, "sh", *arguments],
            env=env,
            childFDs=child_fds,
        )
        self._workers[number] = worker
        log.info("started worker {number} (pid {pid})", number=number, pid=worker.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.number) is worker:
            del self._workers[worker.number]
        if not self.running:
            return
        delay = self._delays.get(worker.number, RESTART_DELAY)
        self._delays[worker.number] = min(delay * 2, MAX_RESTART_DELAY)
        log.warn(
            "worker {number} (pid {pid}) ended ({reason}); starting it again in {delay:.0f}s",
            number=worker.number,
            pid=worker.pid,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._restarts[worker.number] = self._reactor.callLater(delay, self._start, worker.number)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        return DeferredList([worker.stop(self._reactor) for worker in self._workers.values()])


class _Worker(ProcessProtocol):
    def __init__(self, workers: WorkerProcesses, number: int) -> None:
        self._workers = workers
        self.number = number
        self._ended: list[Deferred[None]] = []
        self._gone = False

    @property
    def pid(self) -> int | None:
        transport: IProcessTransport | None = self.transport
        return transport.pid if transport is not None else None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()  # (a pipe nobody writes: the worker reads nothing)

    def processEnded(self, reason: Failure) -> None:
        self._gone = True
        for waiter in self._ended:
            waiter.callback(None)
        self._workers.ended(self, reason)

    def stop(self, reactor: Any) -> Deferred[None]:
        """SIGTERM (twistd stops its services), then SIGKILL after STOP_GRACE."""
        ended: Deferred[None] = Deferred()
        if self._gone:
            ended.callback(None)
            return ended
        self._ended.append(ended)
        self._signal("TERM")
        kill = reactor.callLater(STOP_GRACE, self._signal, "KILL")
        ended.addBoth(lambda result: kill.cancel() if kill.active() else None)
        return ended

    def _signal(self, name: str) -> None:
        transport = self.transport
        if transport is not None and not self._gone:
            try:
                transport.signalProcess(name)
            except (OSError, ProcessLookupError):
                pass


# A stopped worker must not linger after the mirror: its parent's death ends it too.
def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a worker, after a SIGKILL of
    worker 0); elsewhere nothing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
