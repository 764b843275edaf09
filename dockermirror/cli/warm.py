"""``dockermirror cache warm``: pull images into a mirror's cache before anyone asks for them.

Two ways, one walk (:mod:`dockermirror.registry.warming`):

``--mirror URL``
    through a running mirror, over HTTP, as a client would pull: the mirror is
    spoken to as a registry (with ``--username`` and ``--password-stdin`` when
    it has users).  A reference is asked of the mirror as written, as ``docker
    pull MIRROR/REF`` would: ``redis`` goes to the route of the mirror's host
    (Docker's ``registry-mirrors`` form), ``ghcr.io/owner/image`` by path
    prefix.  Each blob is first asked for with a HEAD, and not downloaded when
    the mirror's ``X-Dockermirror-Cache: HIT`` says it has it stored.

``--cache-dir DIR`` / ``--config FILE``
    straight into a cache directory, with the configuration's registries and
    no mirror at all (the directory defaults to the configuration's
    ``cache.dir``).  This is safe while a mirror runs on the same directory:
    the index is SQLite (each change one short transaction, retried while the
    other process holds a lock), a blob appears under its digest only by a
    rename once its digest was checked, and this command, unlike a mirror
    starting, deletes nothing it did not write (no clearing of ``tmp/``, where
    the mirror's downloads in progress are; no removal of files the index does
    not know yet).  It ends only when everything it fetched is in the index.

Exit status: 0 when every image was warmed, 1 when some failed (one line each
on stderr), 2 on a usage or configuration error (a mirror refusing to log in
included), 130 when interrupted.  On a
terminal a progress bar is drawn on stderr; one summary line per image goes to
stdout in any case.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
from hyperlink import DecodedURL
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import react
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.web.client import Agent, HTTPConnectionPool

from dockermirror.cli.common import CommandError, Commands, check_owner
from dockermirror.cli.progress import Progress
from dockermirror.config import (
    MirrorConfig,
    Registry,
    UpstreamSettings,
    build_config,
    load_toml,
)
from dockermirror.configvalues import ConfigError
from dockermirror.errors import DENIED, RegistryError
from dockermirror.metrics import Metrics
from dockermirror.reference import parse_image
from dockermirror.registry.caching import CachingRegistry, scope_of
from dockermirror.registry.fills import Fill, RemoteFill
from dockermirror.registry.mediatypes import ALL_MANIFESTS
from dockermirror.registry.model import BlobSource
from dockermirror.registry.model import Registry as RegistryInterface
from dockermirror.registry.upstream import UpstreamRegistry
from dockermirror.registry.warming import (
    DEFAULT_CONCURRENCY,
    Platform,
    StoredCheck,
    WarmFailure,
    WarmResult,
    describe,
    is_local,
    warm_image,
)
from dockermirror.routing import Target, target_for_image
from dockermirror.service import build_registry
from dockermirror.storage import layout
from dockermirror.storage.layout import NotACache
from dockermirror.upstream.client import UpstreamClient
from dockermirror.upstream.pools import UpstreamPools

# The exit statuses of every subcommand (dockermirror.cli.common): done, the command's "no",
# it could not do its job; interrupted.
WARMED, SOME_FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
# Every line on stderr starts so, as for the other subcommands (dockermirror.cli).
PROG = "dockermirror"
# The header a mirror says where a blob came from with (web.responses.CACHE_HEADER: not
# imported, the web layer is heavy for a command).
CACHE_HEADER = "x-dockermirror-cache"
# Talking to a mirror: it may wait on its own upstream (token, redirects) before it answers.
MIRROR_SETTINGS = UpstreamSettings(response_timeout=60.0, idle_timeout=120.0)

# After an image's walk, a mode may check or complete what it did (cache-dir: wait for the
# index, confirm every blob was kept).
Settle = Callable[[Target, WarmResult], Awaitable[WarmResult]]


class UsageError(Exception):
    pass


@attrs.frozen
class Job:
    image: str  # as the operator wrote it
    target: Target
    reference: str  # tag or digest


def add_parser(cache_subparsers: Commands) -> argparse.ArgumentParser:
    """Add ``warm`` to ``dockermirror cache``'s subcommands; it runs ``args.command(args)``."""
    parser = cache_subparsers.add_parser(
        "warm",
        help="pull images into the cache ahead of the clients",
        description="Pull images into a mirror's cache ahead of its clients: through a running"
        " mirror (--mirror), or straight into a cache directory (--cache-dir, --config).",
        epilog="Exit status: 0 all warmed, 1 some failed, 2 usage or configuration error.",
    )
    parser.add_argument(
        "images",
        nargs="*",
        metavar="REF",
        help="an image: redis:7, ghcr.io/owner/image@sha256:...",
    )
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="LIST",
        help="read references from LIST, one a line (# comments, blank lines); - for stdin",
    )
    parser.add_argument(
        "--platform",
        action="append",
        default=[],
        type=_platform,
        metavar="OS/ARCH[/VARIANT]",
        help="of a multi-platform image, warm only this platform (repeatable; default: all)",
    )
    mirror = parser.add_argument_group("through a running mirror")
    mirror.add_argument("--mirror", metavar="URL", help="the mirror, http(s)://HOST[:PORT]")
    mirror.add_argument("--username", help="a user of the mirror")
    mirror.add_argument(
        "--password-stdin", action="store_true", help="read the user's password from stdin"
    )
    directory = parser.add_argument_group("straight into a cache directory")
    directory.add_argument(
        "--cache-dir", metavar="DIR", help="the cache directory (default: the configuration's)"
    )
    directory.add_argument(
        "--config", metavar="FILE", help="the mirror's configuration (its registries)"
    )
    parser.set_defaults(command=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The command: runs the reactor until every image is warmed; returns the exit status."""
    # Only errors (the disk failing, say): each failed blob has its own line already.
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(LogLevel.error)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        react(_main, (args,))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else SOME_FAILED
    return WARMED  # (react always exits)


async def _main(reactor: Any, args: argparse.Namespace) -> None:
    work = Deferred.fromCoroutine(warm_command(reactor, args, sys.stdin, sys.stdout, sys.stderr))
    ended: Deferred[None] = Deferred()

    def end(result: object) -> object:
        ended.callback(None)
        return result

    def interrupted() -> Deferred[None]:
        # Ctrl-C: stop the transfers, and let the storage close before the reactor stops.
        work.cancel()
        return ended if not ended.called else succeed(None)

    work.addBoth(end)

    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    try:
        code = await work
    except CancelledError:
        print(f"{PROG}: interrupted", file=sys.stderr)
        code = INTERRUPTED
    raise SystemExit(code)


async def warm_command(
    reactor: Any, args: argparse.Namespace, stdin: TextIO, out: TextIO, err: TextIO
) -> int:
    """The whole command on a running reactor; the exit status."""
    try:
        images = references(args, stdin)
        if args.mirror is not None:
            if args.cache_dir is not None or args.config is not None:
                raise UsageError("--mirror warms a mirror; --cache-dir and --config a directory")
            password = _password(args, stdin)
            return await through_mirror(
                reactor, args.mirror, args.username, password, images, args.platform, out, err
            )
        if args.username is not None or args.password_stdin:
            raise UsageError("--username and --password-stdin go with --mirror")
        config = load_config(args.config, args.cache_dir)
        jobs = [Job(image, *target_for_image(config, image)) for image in images]
        directory = Path(config.cache.dir)
        if args.cache_dir is None and not _a_cache(directory):
            # Filling a new directory nobody reads would look like success.
            raise UsageError(
                f"no cache in {directory} yet (the configuration's cache.dir): give"
                " --cache-dir to fill one there, or the directory of the mirror's cache"
            )
        check_owner(directory)
    except CommandError as e:
        print(f"{PROG}: {e}", file=err)
        return USAGE
    except UsageError as e:
        print(f"{PROG}: {e}", file=err)
        return USAGE
    except (ConfigError, RegistryError) as e:
        print(f"{PROG}: {e.message if isinstance(e, RegistryError) else e}", file=err)
        return USAGE
    return await into_directory(reactor, config, jobs, args.platform, out, err)


def _a_cache(directory: Path) -> bool:
    try:
        layout.recognise(directory)
    except NotACache:
        return False
    return True


def references(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    """The images named on the command line and in the lists, checked, in order, once each."""
    # Each image with where it was named, for the message about a bad one.
    named = [(image, "the command line") for image in args.images]
    for name in args.file:
        if name == "-":
            if args.password_stdin:
                raise UsageError("stdin holds the password; give the list as a file")
            text = stdin.read()
        else:
            try:
                text = Path(name).read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"cannot read {name}: {getattr(e, 'strerror', e)}") from None
        named += [(ref, f"{name}:{number}") for number, ref in read_list(text)]
    if not named:
        raise UsageError("name at least one image (REF, or --file LIST)")
    for image, where in named:
        try:
            parse_image(image)
        except RegistryError as e:
            raise UsageError(
                f"{where}: {image!r} is not an image reference ({e.message})"
            ) from None
    return list(dict.fromkeys(image for image, _ in named))


def read_list(text: str) -> list[tuple[int, str]]:
    """References and their line numbers, one a line; ``#`` starts a comment, blank lines
    are ignored."""
    return [
        (number, ref)
        for number, line in enumerate(text.splitlines(), 1)
        if (ref := line.partition("#")[0].strip())
    ]


def load_config(path: str | None, cache_dir: str | None) -> MirrorConfig:
    """The configuration, with its cache on (the operator asked to fill it) in ``cache_dir``."""
    data = load_toml(path) if path is not None else {}
    cache: dict[str, Any] = {"enabled": True}
    if cache_dir is not None:
        cache["dir"] = cache_dir
    return build_config(data, cache=cache)


def _password(args: argparse.Namespace, stdin: TextIO) -> str | None:
    if args.password_stdin != (args.username is not None):
        raise UsageError("--username and --password-stdin go together")
    if not args.password_stdin:
        return None
    password = stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin: stdin gave no password")
    return password


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


async def warm_all(
    registry: RegistryInterface,
    jobs: Sequence[Job],
    platforms: Sequence[Platform],
    out: TextIO,
    err: TextIO,
    *,
    stored: StoredCheck = is_local,
    settle: Settle | None = None,
) -> int:
    """Warm each image in turn; a summary line each, a line per failure; the exit status."""
    failed = 0
    for job in jobs:
        bar = _Bar(err, job.image)
        try:
            result = await warm_image(
                registry,
                job.target,
                job.reference,
                platforms,
                image=job.image,
                progress=bar,
                stored=stored,
            )
            if settle is not None:
                result = await settle(job.target, result)
        finally:
            bar.finish()
        print(summary(result), file=out, flush=True)
        for failure in result.failures:
            print(f"{PROG}: {job.image}: {failure.what}: {failure.problem}", file=err, flush=True)
        failed += not result.ok
    return SOME_FAILED if failed else WARMED


def summary(result: WarmResult) -> str:
    parts = [
        _count(len(result.manifests), "manifest"),
        f"{_count(len(result.fetched), 'blob')} fetched ({_size(result.bytes)})",
        f"{len(result.cached)} already cached",
    ]
    if result.skipped:
        parts.append(f"{_count(len(result.skipped), 'foreign layer')} skipped")
    if result.failures:
        parts.append(_count(len(result.failures), "failure"))
    state = "warmed" if result.ok else "FAILED"
    digest = f" ({result.digest})" if result.digest else ""
    return f"{state} {result.image}{digest}: {', '.join(parts)}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _size(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


class _Bar:
    """The walk's progress as a byte bar on a terminal (nothing elsewhere)."""

    def __init__(self, out: TextIO, image: str) -> None:
        self._progress = Progress(out, None, image, unit="B")

    def found(self, blobs: int, size: int) -> None:
        self._progress.add_total(size)

    def advanced(self, blobs: int, size: int) -> None:
        self._progress.advance(size)

    def finish(self) -> None:
        self._progress.finish()


# Through a running mirror


async def through_mirror(
    reactor: Any,
    url: str,
    username: str | None,
    password: str | None,
    images: Sequence[str],
    platforms: Sequence[Platform],
    out: TextIO,
    err: TextIO,
) -> int:
    mirror = Registry("mirror", mirror_url(url), username, password)
    pool = HTTPConnectionPool(reactor)
    pool.maxPersistentPerHost = 2 * DEFAULT_CONCURRENCY
    agent = Agent(reactor, connectTimeout=MIRROR_SETTINGS.connect_timeout, pool=pool)
    client = UpstreamClient(mirror, agent, reactor, MIRROR_SETTINGS)
    registry = UpstreamRegistry({mirror.name: client}, MIRROR_SETTINGS)
    jobs = [
        Job(image, mirror_target(mirror, image), parse_image(image).reference) for image in images
    ]
    try:
        refused = await refused_login(client, jobs[0], url)
        if refused is not None:
            print(f"{PROG}: {refused}", file=err)
            return USAGE
        return await warm_all(registry, jobs, platforms, out, err, stored=MirrorHits(client))
    finally:
        await pool.closeCachedConnections()


async def refused_login(client: UpstreamClient, job: Job, url: str) -> str | None:
    """Whether the mirror cannot be reached or refuses to log us in (no user, or a wrong
    password); why.

    Found once, up front, with a HEAD: otherwise each image would fail with the
    words the mirror's client code has for an upstream refusing the mirror.
    """
    try:
        response = await client.request(
            b"HEAD",
            job.target.name,
            ("manifests", job.reference),
            headers={b"accept": [t.encode() for t in ALL_MANIFESTS]},
        )
    except RegistryError as e:
        if e.code != DENIED:
            # Before any answer: it is the mirror that cannot be reached (the client's words
            # would blame "the upstream registry").
            problem = e.detail.get("problem") if isinstance(e.detail, dict) else None
            return f"cannot use the mirror at {url}: {problem or e.message}"
        user = client.registry.username
        if user is None:
            return f"the mirror at {url} has users: give --username and --password-stdin"
        return f"the mirror at {url} refused the password of user {user}"
    response.discard()
    return None


def mirror_url(text: str) -> DecodedURL:
    try:
        url = DecodedURL.from_text(text)
    except ValueError as e:
        raise UsageError(f"--mirror {text!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
        raise UsageError(f"--mirror {text!r}: give http(s)://HOST[:PORT][/PATH]")
    if any(url.userinfo):
        raise UsageError("--mirror: no credentials in the URL; use --username, --password-stdin")
    return url.replace(path=tuple(s for s in url.path if s))


def mirror_target(mirror: Registry, image: str) -> Target:
    """The repository as ``docker pull MIRROR/IMAGE`` names it to the mirror."""
    parsed = parse_image(image)
    name = f"{parsed.registry}/{parsed.name}" if parsed.registry else parsed.name
    return Target(mirror, name, name)


class MirrorHits:
    """Whether the mirror has a blob stored: a HEAD, and its ``X-Dockermirror-Cache`` header.

    The header is the mirror's, not the registry API's, so it is read here, from the
    client's own response, and never enters the domain's BlobInfo.
    """

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    async def __call__(self, target: Target, source: BlobSource) -> bool:
        response = await self._client.request(b"HEAD", target.name, ("blobs", source.digest))
        response.discard()
        # (Anything else, a 404 say, is for the GET that follows to report.)
        return response.code == 200 and response.header(CACHE_HEADER) == "HIT"


# Straight into a cache directory


async def into_directory(
    reactor: Any,
    config: MirrorConfig,
    jobs: Sequence[Job],
    platforms: Sequence[Platform],
    out: TextIO,
    err: TextIO,
) -> int:
    pools = UpstreamPools(config, reactor)
    # The mirror's own stack, as a process that does not own the directory (a mirror may be
    # running on it): nothing of the mirror's is cleaned up, evicted or scrubbed.
    cache, _ = build_registry(
        config, reactor, pools.clients, metrics=Metrics(reactor, {}), owner=False
    )
    assert isinstance(cache, CachingRegistry)  # the configuration's cache is on
    storage = cache.storage
    settings = config.cache
    try:
        try:
            await storage.open()
        except Exception as e:
            print(f"{PROG}: cannot use the cache in {settings.dir}: {e}", file=err)
            return USAGE

        async def settle(target: Target, result: WarmResult) -> WarmResult:
            return await kept(cache, target, result)

        return await warm_all(cache, jobs, platforms, out, err, settle=settle)
    finally:
        await storage.close()
        await pools.stopService()


async def kept(cache: CachingRegistry, target: Target, result: WarmResult) -> WarmResult:
    """Wait until every blob fetched is in the index; one that is not is a failure.

    A blob's last byte reaches its reader before the blob is renamed and indexed:
    closing the storage earlier would lose it.
    """
    scope = scope_of(target)
    failures = []
    for digest in result.fetched:
        fill = cache.running_fill(scope, digest)
        if fill is not None:
            await _ended(fill)
        try:
            source = await cache.blob(target, digest)
            stored = source.local_file() is not None
        except Exception as e:
            failures.append(WarmFailure(digest, f"fetched, but not kept: {describe(e)}"))
            continue
        if not stored:
            failures.append(
                WarmFailure(
                    digest,
                    "fetched, but not kept: no room in the cache (cache.max_size,"
                    " cache.min_free), or it could not be written",
                )
            )
    if not failures:
        return result
    return attrs.evolve(result, failures=result.failures + tuple(failures))


def _ended(fill: Fill | RemoteFill) -> Deferred[None]:
    ended: Deferred[None] = Deferred()
    fill.when_ended(lambda _: ended.callback(None))
    return ended
