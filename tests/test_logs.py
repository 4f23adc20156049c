"""The access log: one JSON line per request, never a key or a value, never a forged line.

Issue 5, point 9. A real server logs at ``info``; the test reads its stderr
file. Every line in that file must be either the start-up line, the
shutdown line or a JSON object — so no input, however it is smuggled in
(a newline or U+2028 in the path, a header, an event name, a property), can
start a line of its own. Requests that waitress itself refuses before the
app sees them (a malformed request line, headers past its cap) are not
logged by the app.
"""

import json
import logging
import re
import socket
import time
from typing import Any

import pytest

from drengr.core.auth import KeyRecord
from drengr.core.outcome import StoreOutcome
from drengr.logs import JsonFormatter, TextFormatter
from drengr.store import SQLiteStore
from drengr.web import Config, create_app

from .support.realserver import Server, basic, create_db, launch, no_stray_servers  # noqa: F401 (an autouse fixture)

pytestmark = pytest.mark.slow

SECRET_VALUE = "SENTINEL-VALUE-5f9c"
SECRET_USER = "SENTINEL-USER-0a7e"
FORGED = '{"method": "POST", "path": "/forged", "status": 200}'
ACCESS_FIELDS = {"time", "level", "logger", "method", "path", "status", "error", "tenant", "items", "stored",
                 "duplicates", "over_cap", "dropped", "stripped", "bytes", "library", "ms",
                 "auth_failure"}  # fmt: skip
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def access_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)  # every JSON-looking line is one whole object
            if "status" in record:
                lines.append(record)
    return lines


def wait_for_lines(server: Server, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(lines := access_lines(server)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_one_line_per_request_with_counts_and_never_a_key_or_value(tmp_path):
    db = tmp_path / "logs.db"
    key = create_db(db)
    server = launch(db, key, log_level="info")
    unknown = "drengr_pk_UNKNOWNUNKNOWNUNKNOWN00000000"
    forged_event = f"x\n{FORGED}\n\u2028{FORGED}\r{FORGED}"
    batch = {
        "batch": [
            {
                "type": "track",
                "event": forged_event,
                "userId": SECRET_USER,
                "properties": {"plan": SECRET_VALUE, "email": SECRET_VALUE},
            },
            {"type": "track", "event": "No Id"},  # dropped: missing_id
            {"type": "bogus", "userId": "u"},  # dropped: unknown_type
            {"type": "track", "event": "Seen", "userId": "u", "messageId": "m1"},
            {"type": "track", "event": "Seen", "userId": "u", "messageId": "m1"},  # a duplicate
        ]
    }
    try:
        before = len(access_lines(server))  # the start-up health checks are at debug: none
        sent = [
            server.post("/v1/batch", batch),
            server.post("/v1/track", {"event": "x", "userId": "u"}, key=unknown),
            server.request(
                "POST", "/v1/track", json.dumps({"event": "x", "userId": "u", "writeKey": key}).encode()
            ),
            server.request("POST", "/v1/track", b"{not json " + SECRET_VALUE.encode(), basic(key)),
            server.request("POST", "/v1/track", b'{"event":"x"}', {"X-Write-Key": key}),
            server.request(
                "POST",
                f"/v1/track%0A{FORGED.replace(' ', '')}%E2%80%A8x",
                b'{"event":"x","userId":"u"}',
                basic(key),
            ),
            server.request("POST", f"/v1/{key}/track", b'{"event":"x","userId":"u"}', basic(key)),
            server.request(
                "POST",
                "/v1/track",
                b'{"event":"x","userId":"u"}',
                {"User-Agent": f"app/1 {key} \u2028".encode().decode("latin-1"), **basic(key)},
            ),
            server.request("GET", f"/v1/projects/{key}/settings"),
            server.request("GET", "/v1/projects/drengr_pk_nope/settings"),
            server.request(
                "OPTIONS",
                "/v1/batch",
                headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"},
            ),
            server.request("GET", "/v1/batch"),
            server.request("GET", "/health"),
        ]
        # An obs-folded header (a line starting with a space continues the previous one):
        # waitress unfolds it into the User-Agent, which the line then holds as an escaped string.
        folded = raw_exchange(
            server.port,
            b"POST /v1/track HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 26\r\n"
            + b"User-Agent: a\r\n " + FORGED.encode() + b"\r\n"
            + b"Authorization: " + basic(key)["Authorization"].encode() + b"\r\n\r\n"
            + b'{"event":"x","userId":"u"}',
        )  # fmt: skip
        assert folded.startswith(b"HTTP/1.1 200 ")
        assert [reply.status for reply in sent] == [
            200,
            401,
            200,
            400,
            200,
            200,
            200,
            200,
            200,
            404,
            204,
            405,
            200,
        ]
        logged_requests = len(sent) + 1 - 1  # the folded request, not the /health probe (debug)
        lines = wait_for_lines(server, before + logged_requests)
    finally:
        assert server.stop() == 0

    text = server.log_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    for record in records:
        assert TIME.fullmatch(record["time"]) and record["level"] in ("info", "warning"), record
        assert record["logger"].startswith(("drengr", "waitress")) and record.get("path") != "/forged", record
    messages = [record["message"] for record in records if "message" in record]
    assert messages[0].startswith("Listening on http://127.0.0.1:") and messages[-1].startswith("Stopping: ")
    assert not any(record.get("path") == "/health" for record in records)
    assert len(lines) - before == logged_requests  # one line per request, no more
    assert all(set(line) == ACCESS_FIELDS for line in lines)
    for needle in (key, unknown, SECRET_VALUE, SECRET_USER, basic(key)["Authorization"].split()[1]):
        assert needle not in text, f"{needle[:12]}… is in the log"

    first = lines[before]
    assert (first["status"], first["tenant"], first["items"], first["stored"], first["duplicates"]) == (
        200,
        "acme",
        5,
        2,
        1,
    )
    assert first["dropped"] == {"missing_id": 1, "unknown_type": 1}
    assert first["stripped"] == {"pii_key_removed": 1}  # counts only: names and values stay out of the log
    assert first["bytes"] == len(json.dumps(batch).encode()) and first["ms"] >= 0
    statuses = [line["status"] for line in lines[before:]]
    assert statuses[:5] == [200, 401, 200, 400, 200]
    assert [line["auth_failure"] for line in lines[before : before + 5]] == [
        None,
        "unknown_key",
        None,
        None,
        None,
    ]
    assert [line["error"] for line in lines[before + 1 : before + 4]] == [
        "unauthorized",
        None,
        "invalid_json",
    ]
    assert lines[before + 8]["path"] == "/v1/projects/{writeKey}/settings"
    assert lines[before + 5]["path"].startswith("/v1/track\n{")  # held as "\\n" inside one line
    assert lines[-1]["library"].startswith("a ") and "/forged" in lines[-1]["library"]


def test_an_unexpected_error_is_one_line_without_the_message(caplog):
    """A bug's exception message may quote the input: the log keeps its type and frames only."""

    class ExplodingStore:
        def lookup_key(self, key_hash: str) -> KeyRecord:
            raise RuntimeError(f"boom\n{FORGED}\n{SECRET_VALUE}")

        def write(self, *args: Any) -> StoreOutcome:
            raise AssertionError("not reached")

    app = create_app(Config(db=":memory:"), store=ExplodingStore())  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO):
        reply = app.test_client().post(
            "/v1/track", data=b'{"event":"x"}', headers={"X-Write-Key": "drengr_pk_x"}
        )
    assert reply.status_code == 502 and reply.json["error"] == "Ingest failed"
    formatted = [JsonFormatter().format(record) for record in caplog.records]
    assert len(formatted) == 2  # the error, then the access line
    for line in formatted:
        assert "\n" not in line and SECRET_VALUE not in line and "/forged" not in line
    error = json.loads(formatted[0])
    assert error["unexpected_error"] == "RuntimeError" and error["frames"]
    assert json.loads(formatted[1])["status"] == 502


@pytest.mark.parametrize("formatter", [JsonFormatter, TextFormatter], ids=["json", "text"])
def test_the_formatter_escapes_every_line_break(formatter: type[logging.Formatter]) -> None:
    record = logging.LogRecord(
        "drengr", logging.ERROR, __file__, 1, "a\nb\rc\u2028d\u2029e\x85f\x0bg", None, None
    )
    line = formatter().format(record)
    assert line.splitlines() == [line]
    try:
        raise ValueError("multi\nline")
    except ValueError:
        import sys

        record = logging.LogRecord("drengr", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert len(formatter().format(record).splitlines()) == 1


# ---------------------------------------------------------------- what a 401 was, and the formats

TRACK = json.dumps({"event": "x", "userId": "u"}).encode()


def test_a_401_line_names_the_failure_and_never_the_key(tmp_path):
    """An operator can tell a misconfigured SDK from a prober; the answer to each is the same 401."""
    db = tmp_path / "auth.db"
    key = create_db(db)
    store = SQLiteStore(str(db))
    secret, revoked = store.create_key("acme", "secret"), store.create_key("acme")
    store.revoke_key(revoked)
    store.close()
    unknown = "drengr_pk_UNKNOWNUNKNOWNUNKNOWN00000000"
    server = launch(db, key)
    cases = [  # (method, path, headers, body, the failure logged)
        ("POST", "/v1/track", {}, TRACK, "missing"),
        ("POST", "/v1/track", {"Authorization": f"Bearer {key}"}, TRACK, "malformed"),
        ("POST", "/v1/track", basic(unknown), TRACK, "unknown_key"),
        ("POST", "/v1/track", basic(revoked), TRACK, "revoked"),
        ("POST", "/v1/track", basic(secret), TRACK, "secret_key"),
        ("POST", "/v1/track", {}, json.dumps({"event": "x", "userId": "u", "writeKey": unknown}).encode(),
         "unknown_key"),
        ("GET", "/sourceConfig", basic(revoked), None, "revoked"),
        ("GET", "/v1/events", {}, None, "missing"),
        ("GET", "/v1/events", {"Authorization": "Token abc"}, None, "malformed"),
        ("GET", "/v1/events", {"Authorization": f"Bearer {key}"}, None, "publishable_key"),
        ("GET", "/v1/events", {"Authorization": f"Bearer {revoked.replace('_pk_', '_sk_')}"}, None, "unknown_key"),
    ]  # fmt: skip
    try:
        before = len(access_lines(server))
        replies = [server.request(method, path, body, headers) for method, path, headers, body, _ in cases]
        assert [reply.status for reply in replies] == [401] * len(cases)
        ingest = [reply.body for reply, case in zip(replies, cases, strict=True) if case[1] != "/v1/events"]
        assert len(set(ingest)) == 1  # one answer for every kind
        lines = wait_for_lines(server, before + len(cases))[before:]
    finally:
        assert server.stop() == 0
    assert [(line["path"], line["status"], line["auth_failure"]) for line in lines] == [
        (path, 401, failure) for _, path, _, _, failure in cases
    ]
    text = server.log_text()
    for needle in (key, secret, revoked, unknown):
        assert needle not in text, f"{needle[:12]}… is in the log"


def test_health_is_logged_at_debug_and_text_format_is_one_plain_line(tmp_path):
    db = tmp_path / "text.db"
    key = create_db(db)
    server = launch(db, key, "--log-format", "text", log_level="debug")
    try:
        assert server.post("/v1/track", {"event": "x", "userId": "u"}).status == 200
        deadline = time.monotonic() + 10  # a hang guard: the line is written when the answer is
        while '"/v1/track"' not in server.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
    lines = server.log_text().splitlines()
    shape = re.compile(r"(\S+) (debug|info|warning) +(\S+) (.*)")
    parsed = [shape.fullmatch(line) for line in lines]
    assert all(parsed), [line for line, match in zip(lines, parsed, strict=True) if not match]
    assert all(TIME.fullmatch(match.group(1)) for match in parsed if match)
    by_logger = [(m.group(2), m.group(3), m.group(4)) for m in parsed if m]
    assert by_logger[0][:2] == ("info", "drengr.server") and by_logger[0][2].startswith(
        "Listening on http://"
    )
    health = [
        json.loads(rest)
        for level, logger, rest in by_logger
        if logger == "drengr.access" and level == "debug"
    ]
    assert health and all(line["path"] == "/health" for line in health)  # launch's probes
    [track] = [json.loads(rest) for level, _, rest in by_logger if level == "info" and '"/v1/track"' in rest]
    assert track["status"] == 200 and track["stored"] == 1
