"""Auth against the real server: one answer for every failure, keys never at rest, floods shrugged off.

Issue 5, point 7. The latency of each failure class is measured by
``bench/bench_auth_timing.py`` (a benchmark, not an assertion); here:

- every failure class gets the same 401 — status, body and every header
  (``Date`` aside, which names the second) — every time;
- the database files (main, WAL, shared memory) and the log never contain a
  key, in clear or as its Basic-auth token, not even a rejected one;
- a flood of unknown keys leaves valid traffic answered (its p99 with and
  without the flood is printed; run with ``-s``).
"""

import base64
import json
import random
import secrets
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drengr.core.errors import UNAUTHORIZED_BODY
from drengr.store import SQLiteStore

from .support.realserver import Reply, Server, basic, create_db, launch, no_stray_servers  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.slow

EVENT = {"type": "track", "event": "Signed Up", "userId": "u-1", "properties": {"plan": "pro"}}
# A generous hang guard, not a speed limit: a flood that never gets going fails after this long.
HANG_GUARD_SECONDS = 30


def random_key(prefix: str = "drengr_pk_") -> str:
    return prefix + "".join(random.choices(string.ascii_letters + string.digits + "-_", k=32))


class Keys:
    def __init__(self, db: Path) -> None:
        self.valid = create_db(db)
        store = SQLiteStore(str(db))
        try:
            self.revoked = store.create_key("acme", "publishable")
            store.revoke_key(self.revoked)
            self.secret = store.create_key("acme", "secret")
            self.other_tenant = store.create_key("globex", "publishable")
        finally:
            store.close()
        self.unknown = random_key()

    def all(self) -> list[str]:
        return [self.valid, self.revoked, self.secret, self.other_tenant, self.unknown]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Keys]]:
    db = tmp_path_factory.mktemp("auth") / "auth.db"
    keys = Keys(db)
    server = launch(db, keys.valid, "--threads", "8", log_level="info")
    yield server, keys
    assert server.stop() == 0


def body(**extra: object) -> bytes:
    return json.dumps({**EVENT, **extra}).encode()


# name → (headers, body) built from the keys; every one must be refused identically.
FAILURES = {
    "no-key-anywhere": lambda k: ({}, body()),
    "unknown-key-basic": lambda k: (basic(k.unknown), body()),
    "unknown-key-x-write-key": lambda k: ({"X-Write-Key": k.unknown}, body()),
    "unknown-key-in-body": lambda k: ({}, body(writeKey=k.unknown)),
    "fresh-unknown-key-each-time": lambda k: (basic(random_key()), body()),
    "revoked-key-basic": lambda k: (basic(k.revoked), body()),
    "revoked-key-in-body": lambda k: ({}, body(writeKey=k.revoked)),
    "secret-key-basic": lambda k: (basic(k.secret), body()),
    "secret-key-x-write-key": lambda k: ({"X-Write-Key": k.secret}, body()),
    "secret-key-in-body": lambda k: ({}, body(writeKey=k.secret)),
    "jitsu-masked-key-in-body": lambda k: ({}, body(writeKey="id:***")),
    "malformed-bearer": lambda k: ({"Authorization": "Bearer " + k.valid}, body()),
    "malformed-basic-not-base64": lambda k: ({"Authorization": "Basic %%%"}, body()),
    "malformed-basic-no-credentials": lambda k: ({"Authorization": "Basic"}, body()),
    "malformed-basic-not-utf8": lambda k: (
        {"Authorization": "Basic " + base64.b64encode(b"\xff:").decode()},
        body(),
    ),
    "malformed-header-beats-valid-x-write-key": lambda k: (
        {"Authorization": "Digest x", "X-Write-Key": k.valid},
        body(),
    ),
    "unknown-basic-beats-valid-body-key": lambda k: (basic(k.unknown), body(writeKey=k.valid)),
    "key-with-trailing-garbage": lambda k: (basic(k.valid + "x"), body()),
    "key-prefix-only": lambda k: (basic("drengr_pk_"), body()),
    "key-differing-in-case": lambda k: (basic(k.valid.upper()), body()),
    "write-key-not-a-string": lambda k: ({}, body(writeKey=12345)),
    "empty-basic-username-no-other-key": lambda k: (
        {"Authorization": "Basic " + base64.b64encode(b":pw").decode()},
        body(),
    ),
}


def comparable(reply: Reply) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    return reply.status, reply.body, tuple(sorted((n, v) for n, v in reply.headers if n.lower() != "date"))


def send(server: Server, headers: dict[str, str], payload: bytes) -> Reply:
    return server.request("POST", "/v1/track", payload, {"Content-Type": "application/json", **headers})


def test_every_auth_failure_is_the_same_401_byte_for_byte(keyed_server):
    server, keys = keyed_server
    answers = {}
    for name, build in FAILURES.items():
        for _ in range(2):  # "every time"
            answers.setdefault(comparable(send(server, *build(keys))), []).append(name)
    assert len(answers) == 1, json.dumps({str(a[:2]): names for a, names in answers.items()}, indent=1)
    [(status, payload, headers)] = answers
    assert (status, payload) == (401, UNAUTHORIZED_BODY)
    assert ("Access-Control-Allow-Origin", "*") in headers
    assert not any(name.lower() == "www-authenticate" for name, _ in headers)  # no browser prompt
    assert send(server, basic(keys.valid), body()).status == 200
    assert send(server, basic(keys.other_tenant), body()).status == 200


def test_keys_are_never_at_rest_in_clear(keyed_server):
    server, keys = keyed_server
    attempted = random_key()
    for headers, payload in [
        (basic(keys.valid), body()),
        ({"X-Write-Key": keys.valid}, body()),
        ({}, body(writeKey=keys.valid)),
        (basic(keys.secret), body()),
        (basic(attempted), body()),
        ({}, body(writeKey=attempted)),
    ]:
        send(server, headers, payload)
    server.request("GET", f"/v1/projects/{keys.valid}/settings")
    server.request("GET", f"/v1/projects/{attempted}/settings")
    # Keys in query strings: RudderStack's beacon and source-config fetch, and a guessed one.
    assert server.request("POST", f"/beacon/v1/batch?writeKey={keys.valid}", body(), {}).status == 200
    assert server.request("POST", f"/beacon/v1/batch?writeKey={attempted}", body(), {}).status == 401
    assert server.request("GET", f"/sourceConfig/?p=npm&writeKey={keys.valid}").status == 200
    assert server.request("GET", f"/sourceConfig/?writeKey={attempted}").status == 401
    server.request("POST", f"/v1/{keys.valid}/track", body(), basic(keys.valid))
    server.request(
        "POST", "/v1/track", body(), {"User-Agent": f"my-app key={keys.valid}", **basic(keys.valid)}
    )
    secrets_sent = [*keys.all(), attempted]
    needles = {
        k: [k.encode(), base64.b64encode(f"{k}:".encode()), base64.b64encode(k.encode())]
        for k in secrets_sent
    }
    files = [p for p in server.db.parent.iterdir() if p.name.startswith(server.db.name)] + [server.log]
    assert len(files) >= 3
    for path in files:
        content = path.read_bytes()
        for key, forms in needles.items():
            for form in forms:
                assert form not in content, f"{key[:14]}… found in {path.name}"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def valid_latencies(server: Server, key: str, count: int) -> list[float]:
    seconds = []
    for n in range(count):
        started = time.perf_counter()
        reply = send(server, basic(key), body(messageId=f"valid-{n}-{secrets.token_hex(4)}"))
        seconds.append(time.perf_counter() - started)
        assert reply.status == 200
    return seconds


def test_a_flood_of_unknown_keys_does_not_stop_valid_traffic(keyed_server):
    server, keys = keyed_server
    before = valid_latencies(server, keys.valid, 150)
    stop = threading.Event()
    flood_statuses: list[int] = []
    flood_errors: list[BaseException] = []

    def flood(number: int) -> None:
        try:
            while not stop.is_set() and len(flood_statuses) < 20_000:
                key = random_key()  # never cached: every one is a database look-up
                headers, payload = (basic(key), body()) if number % 2 else ({}, body(writeKey=key))
                flood_statuses.append(send(server, headers, payload).status)
        except BaseException as error:  # a flooder that died stops flooding: reported below
            flood_errors.append(error)

    flooders = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(4)]
    for thread in flooders:
        thread.start()
    try:
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while len(flood_statuses) < 100:  # the flood is under way before the measurement starts
            assert not flood_errors and time.monotonic() < deadline, (len(flood_statuses), flood_errors)
            time.sleep(0.05)
        answered_before = len(flood_statuses)
        during = valid_latencies(server, keys.valid, 150)
        answered_during = len(flood_statuses) - answered_before
        flooding_at_the_end = [thread.is_alive() for thread in flooders]
    finally:
        stop.set()
        for thread in flooders:
            thread.join(timeout=HANG_GUARD_SECONDS)
    assert flood_statuses and set(flood_statuses) == {401}
    # The flood overlapped the requests it is said to slow: all four clients were still sending when
    # the last valid request was answered, and they got at least as many answers meanwhile.
    assert not flood_errors, flood_errors
    assert flooding_at_the_end == [True] * 4
    assert answered_during >= len(during), (answered_during, len(during))
    assert server.alive() and server.healthy()
    print(
        f"\nunknown-key flood: {len(flood_statuses)} flood requests (4 clients), {answered_during} of them "
        f"while the 150 valid ones were sent; valid requests "
        f"p50 {percentile(before, 0.5) * 1000:.1f} → {percentile(during, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(before, 0.99) * 1000:.1f} → {percentile(during, 0.99) * 1000:.1f} ms; all 150 answered 200"
    )
