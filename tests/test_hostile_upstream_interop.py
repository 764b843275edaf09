"""A hostile upstream (#8): the mirror survives each misbehaviour with bounded memory.

One hostile upstream (:mod:`tests.support.hostile`) and one real mirror process
serve the whole module.  Every case has a registry of its own in the mirror's
configuration (``<case>.test``, all pointing at the hostile upstream with
credentials configured), so one case's connection pool and authentication state
never leak into another's, while the ``good`` pull that follows each case goes
through the very client the misbehaviour hit.

For each case: the client's answer (an OCI error before any body, or, for a
blob whose headers were already sent, a connection that ends short), the
mirror's memory (VmRSS before, VmHWM during, VmRSS after; the peak is reset
before each case through /proc/PID/clear_refs), no traceback in the mirror's
log, nothing damaged in its cache, and a good pull right after.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest

from tests.support.clients import require
from tests.support.hostile import (
    GOOD_LAYER,
    OCI_MANIFEST,
    blob_for,
    digest_of,
    manifest_for,
)
from tests.support.peers import ROOT, Mirror, start_mirror
from tests.support.probes import indexed
from tests.support.processes import Peer, free_port

KIB, MIB = 1024, 1024 * 1024
RESPONSE_TIMEOUT = 3
IDLE_TIMEOUT = 3
# How much a case may raise the mirror's peak RSS over what it used before the case.
MAX_GROWTH_KIB = 64 * 1024
# What the test client reads at most of one answer, and how long it waits for a byte.
READ_CAP = 32 * MIB
READ_TIMEOUT = 20.0
USER, PASSWORD = "mirror", "s3cret"


# The client side


@attrs.frozen
class Answer:
    """What the client got: status, headers, body, and how the body ended."""

    status: int  # 0: no status line at all
    headers: dict[str, str]
    body: bytes
    # "complete", "cut" (the connection ended before the body did), "stalled", "capped",
    # "closed" (no answer at all)
    ending: str
    seconds: float

    @property
    def code(self) -> str | None:
        try:
            return str(json.loads(self.body)["errors"][0]["code"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def describe(self) -> str:
        took = f"{self.seconds:.1f}s"
        if self.status == 0:
            return f"no answer ({self.ending}, {took})"
        if self.status >= 400:
            return f"{self.status} {self.code or 'non-OCI body'} ({took})"
        declared = self.headers.get("content-length", "chunked")
        size = f"{len(self.body)} of {declared} bytes"
        return f"{self.status} {self.ending}, {size} ({took})"


def get(mirror: Mirror, path: str, headers: dict[str, str] | None = None) -> Answer:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=READ_TIMEOUT)
    status, received, body, ending = 0, {}, bytearray(), "closed"
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        status = response.status
        received = {k.lower(): v for k, v in response.getheaders()}
        while True:
            chunk = response.read(64 * KIB)
            if not chunk:
                # http.client returns b"" at an early end of a Content-Length body.
                short = response.length is not None and response.length > 0
                ending = "cut" if short else "complete"
                break
            body += chunk
            if len(body) >= READ_CAP:
                ending = "capped"
                break
    except http.client.IncompleteRead as e:
        body += e.partial
        ending = "cut"
    except TimeoutError:
        ending = "stalled"
    except (ConnectionError, http.client.HTTPException):
        ending = "cut" if status else "closed"
    finally:
        connection.close()
    return Answer(status, received, bytes(body), ending, time.monotonic() - started)


# The peers


@attrs.frozen
class Hostile:
    peer: Peer
    log: Path
    port: int
    info: dict[str, Any]

    def mark(self) -> int:
        return len(self.records())

    def records(self, since: int = 0) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines[since:] if line.endswith("}")]


def _free_v6_port() -> int:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError:
        return 0  # no IPv6 loopback here: redirects to [::1] are refused by the kernel instead


def start_hostile(root: Path) -> Hostile:
    port, other, elsewhere, v6 = free_port(), free_port(), free_port("127.0.0.2"), _free_v6_port()
    log = root / "hostile-requests.jsonl"
    log.touch()
    args = [sys.executable, "-m", "tests.support.hostile", "--port", str(port)]
    args += ["--other-port", str(other), "--elsewhere-port", str(elsewhere), "--log", str(log)]
    args += ["--v6-port", str(v6)]
    peer = Peer(
        "hostile upstream",
        args,
        ("127.0.0.1", port),
        root / "hostile.log",
        env={"PYTHONPATH": str(ROOT)},
    )
    try:
        # Waits for the gzip bomb, which the upstream compresses at start.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_info", timeout=60) as response:
            info = json.loads(response.read())
    except BaseException:
        peer.stop()
        raise
    return Hostile(peer, log, port, info)


# The cases

Problems = list[str]
Check = Callable[["Case", Answer, "Env", list[dict[str, Any]]], Problems]


@attrs.frozen
class Case:
    mode: str
    kind: str  # "manifest" or "blob"
    expect: Check
    extra: tuple[Check, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.mode}-{self.kind}"

    @property
    def registry(self) -> str:
        return f"{self.id}.test"

    @property
    def repository(self) -> str:
        """The repository as the upstream sees it: the mode first."""
        return f"{self.mode}/{self.kind}"

    def digest(self, env: Env) -> str:
        if self.mode == "gzip":
            return str(env.hostile.info["gzip_digest"])
        if self.mode == "good":
            return digest_of(GOOD_LAYER)
        return digest_of(blob_for(self.mode))

    def path(self, env: Env) -> str:
        if self.kind == "manifest":
            return f"/v2/{self.registry}/{self.repository}/manifests/latest"
        return f"/v2/{self.registry}/{self.repository}/blobs/{self.digest(env)}"

    def content(self, env: Env) -> bytes:
        """The right bytes, where the mode has any."""
        if self.kind == "manifest":
            return manifest_for(self.mode)
        return GOOD_LAYER if self.mode == "good" else blob_for(self.mode)


@attrs.frozen
class Env:
    hostile: Hostile
    mirror: Mirror
    rows: list[str]


def error(status: int, codes: tuple[str, ...] = (), within: float | None = None) -> Check:
    """An OCI error with ``status`` (and one of ``codes``), before any body; in time."""

    def check(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
        problems = []
        if answer.status != status or answer.code is None or answer.ending != "complete":
            problems.append(f"expected an OCI {status} error, got {answer.describe()}")
        elif codes and answer.code not in codes:
            problems.append(f"expected {' or '.join(codes)}, got {answer.code}")
        if within is not None and answer.seconds > within:
            problems.append(f"answered after {answer.seconds:.1f}s, not within {within:g}s")
        return problems

    return check


def error_or_cut(status: int, within: float | None = None) -> Check:
    """For a blob: the OCI error, or a 200 whose connection ends before its body does."""
    as_error = error(status, within=within)

    def check(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
        if answer.status == 200 and answer.ending == "cut":
            if within is not None and answer.seconds > within:
                return [f"cut only after {answer.seconds:.1f}s, not within {within:g}s"]
            return []
        return as_error(case, answer, env, records)

    return check


def served(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
    """The right bytes, whole."""
    content = case.content(env)
    if answer.status == 200 and answer.ending == "complete" and answer.body == content:
        return []
    return [f"expected 200 with the right {len(content)} bytes, got {answer.describe()}"]


def served_or_error(status: int) -> Check:
    as_error = error(status)

    def check(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
        if answer.status == 200:
            return served(case, answer, env, records)
        return as_error(case, answer, env, records)

    return check


def header(record: dict[str, Any], name: str) -> str | None:
    for key, value in record["headers"]:
        if key.lower() == name:
            return str(value)
    return None


def asked_for_identity(
    case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]
) -> Problems:
    """Every request for the case's content asked for no content encoding."""
    asked = [r for r in records if f"/v2/{case.repository}/" in r["path"]]
    encodings = {header(r, "accept-encoding") for r in asked}
    if not asked or encodings != {"identity"}:
        return [f"the mirror asked with Accept-Encoding {sorted(map(str, encodings))}"]
    return []


def never_decoded(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
    if answer.body.count(0) > MIB:
        return [f"the client got {answer.body.count(0)} zero bytes of the decoded bomb"]
    return []


def nothing_at(listener: str) -> Check:
    """No request reached ``listener``: the mirror refused before connecting."""

    def check(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
        reached = [f"{r['method']} {r['path']}" for r in records if r["listener"] == listener]
        return [f"requests reached {listener}: {reached}"] if reached else []

    return check


def no_authorization_at(listener: str, scheme: str = "") -> Check:
    """Requests at ``listener`` carried no Authorization (of ``scheme``, when given)."""

    def check(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
        leaked = [
            f"{r['method']} {r['path']} with {authorization}"
            for r in records
            if r["listener"] == listener
            and (authorization := header(r, "authorization")) is not None
            and authorization.lower().startswith(scheme.lower())
        ]
        return [f"credentials travelled to {listener}: {leaked}"] if leaked else []

    return check


def followed_to(listener: str) -> Check:
    def check(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
        if answer.status == 200 and not any(r["listener"] == listener for r in records):
            return [f"served without asking {listener}"]
        return []

    return check


def token_query_built_by_the_mirror(
    case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]
) -> Problems:
    """The realm's own query is dropped: only service and the mirror's scope are sent."""
    problems = []
    tokens = [r for r in records if urlsplit(r["path"]).path == "/token"]
    if not tokens:
        problems.append("no token request")
    for record in tokens:
        query = parse_qs(urlsplit(record["path"]).query, keep_blank_values=True)
        expected = {"service": ["hostile.test"], "scope": [f"repository:{case.repository}:pull"]}
        if query != expected:
            problems.append(f"token request {record['path']} (expected only {expected})")
    return problems


def no_passwd(case: Case, answer: Answer, env: Env, records: list[dict[str, Any]]) -> Problems:
    return ["the client got /etc/passwd"] if b"root:" in answer.body else []


STALL = RESPONSE_TIMEOUT + 2.0
BLOB_STALL = RESPONSE_TIMEOUT + IDLE_TIMEOUT + 2.0
CASES = [
    Case("good", "manifest", served),
    Case("good", "blob", served),
    Case("headerflood", "manifest", error(502)),
    Case("headerflood", "blob", error(502)),
    Case("continuation", "manifest", error(502)),
    Case("dripheaders", "manifest", error(504, within=STALL)),
    Case("stallbody", "manifest", error(504, within=STALL)),
    Case("stallbody", "blob", error_or_cut(504, within=BLOB_STALL)),
    *(
        Case(mode, kind, error(502) if kind == "manifest" else error_or_cut(502))
        for mode in ("truncated", "badlength", "twolengths", "longer", "shorter")
        for kind in ("manifest", "blob")
    ),
    Case("partial", "manifest", error(502)),
    Case("partial", "blob", error(502)),
    Case("gzip", "manifest", error(502), (asked_for_identity, never_decoded)),
    Case("gzip", "blob", error(502), (asked_for_identity, never_decoded)),
    Case("bigmanifest", "manifest", error(502)),
    Case("bigerror", "manifest", error(404, ("MANIFEST_UNKNOWN", "NAME_UNKNOWN"))),
    Case("bigerror", "blob", error(404, ("BLOB_UNKNOWN", "NAME_UNKNOWN"))),
    Case("redirect-other", "blob", served, (followed_to("other"), no_authorization_at("other"))),
    Case("redirect-loopback", "blob", error(502), (nothing_at("elsewhere"),)),
    Case("redirect-loopback6", "blob", error(502), (nothing_at("v6"),)),
    # localhost is 127.0.0.1 here, the upstream's own address: following is allowed, refusing too.
    Case("redirect-localhost", "blob", served_or_error(502), (no_authorization_at("other"),)),
    Case("redirect-scheme", "blob", error(502), (no_passwd,)),
    Case("redirect-gopher", "blob", error(502), (nothing_at("other"),)),
    Case("realm-elsewhere", "manifest", error(502), (nothing_at("elsewhere"),)),
    Case("realm-query", "manifest", served, (token_query_built_by_the_mirror,)),
    Case("realm-bad", "manifest", error(502)),
    Case("realm-garbage", "manifest", error(502)),
    # Following the token endpoint's redirect without the credentials, or refusing it: both fine.
    Case(
        "token-redirect",
        "manifest",
        served_or_error(502),
        (no_authorization_at("other", "basic"),),
    ),
]


def mirror_config(port: int) -> str:
    registries = "".join(
        f'[registries."{name}"]\nurl = "http://127.0.0.1:{port}"\n'
        f'username = "{USER}"\npassword = "{PASSWORD}"\nby_prefix = true\n\n'
        for name in ["good.test", *(case.registry for case in CASES)]
    )
    return f"""[routes]
"*" = "good.test"

{registries}[upstream]
connect_timeout = 3
response_timeout = {RESPONSE_TIMEOUT}
idle_timeout = {IDLE_TIMEOUT}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("hostile")
    hostile = start_hostile(root)
    try:
        mirror = start_mirror(root, require("twistd"), mirror_config(hostile.port))
    except BaseException:
        hostile.peer.stop()
        raise
    rows: list[str] = []
    yield Env(hostile, mirror, rows)
    mirror.stop()
    hostile.peer.stop()
    table = "\n".join(rows)
    (root / "table.txt").write_text(table + "\n")
    print(f"\nhostile upstream cases (also in {root / 'table.txt'}):\n{table}")


# Memory, log and cache


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key}")


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux 4.0 and later)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def good_pull(env: Env, case: Case) -> str | None:
    """A good image through the same registry (a repository never asked before); its fault."""
    name = f"/v2/{case.registry}/good/after-{case.id}"
    answer = get(env.mirror, f"{name}/manifests/latest", {"Accept": OCI_MANIFEST})
    if answer.status != 200 or answer.body != manifest_for("good"):
        return f"manifest: {answer.describe()}"
    answer = get(env.mirror, f"{name}/blobs/{digest_of(GOOD_LAYER)}")
    if answer.status != 200 or answer.body != GOOD_LAYER:
        return f"layer: {answer.describe()}"
    return None


def damaged_cache(env: Env, case: Case, answer: Answer) -> Problems:
    """Every stored file matches its digest; a refused answer left no tag behind."""
    problems = []
    blobs = env.mirror.cache / "blobs"
    for path in blobs.rglob("*") if blobs.exists() else []:
        # blobs/<algorithm>/<first two hex digits>/<hex digest>; nothing else is content.
        parts = path.relative_to(blobs).parts
        if path.is_file() and len(parts) == 3 and re.fullmatch(r"[0-9a-f]{64,128}", path.name):
            algorithm = parts[0]
            actual = hashlib.new(algorithm, path.read_bytes()).hexdigest()
            if actual != path.name:
                problems.append(f"stored {algorithm}:{path.name} holds {algorithm}:{actual}")
    _, tags = indexed(env.mirror)
    if answer.status != 200 and (case.repository, "latest") in tags:
        problems.append(f"{case.repository}:latest was bound after a failed answer")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_upstream(case: Case, env: Env) -> None:
    mirror = env.mirror
    pid = mirror.peer.process.pid
    log_mark, record_mark = len(mirror.peer.output()), env.hostile.mark()
    reset_peak(pid)
    before = _status(pid, "VmRSS")
    headers = {"Accept": OCI_MANIFEST} if case.kind == "manifest" else {}
    answer = get(mirror, case.path(env), headers)
    peak = _status(pid, "VmHWM")
    records = env.hostile.records(record_mark)
    problems = case.expect(case, answer, env, records)
    for check in case.extra:
        problems += check(case, answer, env, records)
    good = good_pull(env, case)
    after = _status(pid, "VmRSS")
    problems += damaged_cache(env, case, answer)
    if peak - before > MAX_GROWTH_KIB:
        problems.append(f"peak RSS grew by {(peak - before) / 1024:.0f} MiB")
    log = mirror.peer.output()[log_mark:]
    for word in ("Traceback", "Unhandled"):
        if word in log:
            where = log.find(word)
            problems.append(
                f"{word} in the mirror's log: {log[max(0, where - 300) : where + 1500]}"
            )
    if good is not None:
        problems.append(f"the good pull after it failed: {good}")
    reused = [
        f"{r['method']} {r['path']} on connection {r['connection']}"
        for r in env.hostile.records(record_mark)
        if r["unanswered"]
    ]
    if reused:
        problems.append(f"sent on a connection whose last answer was unusable: {reused}")
    row = (
        f"{case.id:28} | {answer.describe():44} | {before / 1024:6.1f} {peak / 1024:7.1f}"
        f" {after / 1024:7.1f} MiB | good pull {'ok' if good is None else 'FAILED'}"
        f" | {'PASS' if not problems else 'FAIL'}"
    )
    env.rows.append(row)
    print(row)
    assert not problems, "\n".join(problems)
