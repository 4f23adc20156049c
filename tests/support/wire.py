"""The requests real clients sent, captured on the wire (tests/data/wire), and replaying them.

Each capture is one HTTP request exactly as an SDK sent it: method, path,
headers, body bytes (gzip kept compressed). ``send`` replays one through a
Flask test client with the placeholder write key swapped for a real one.
tests/test_golden_wire.py holds the contract they are checked against;
test_postgres_store.py replays them into PostgreSQL too.
"""

import base64
import gzip
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

WIRE_DIR = Path(os.environ.get("DRENGR_WIRE_DIR", Path(__file__).resolve().parents[1] / "data" / "wire"))


@dataclass(frozen=True)
class Capture:
    """One captured HTTP request, exactly as the client sent it."""

    client: str
    number: str  # "002"
    scenario: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]  # in the order sent, original case
    wire: bytes  # the body bytes as sent (still gzip-compressed when Content-Encoding says so)
    responded_status: int  # what the recording server answered (retry scenarios: 500, 429, …)

    @property
    def id(self) -> str:
        return f"{self.client}/{self.number}-{self.scenario}"

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    @property
    def gzipped(self) -> bool:
        return (self.header("Content-Encoding") or "").lower() == "gzip"

    @cached_property
    def text(self) -> bytes:
        """The body after Content-Encoding: the JSON text the server parses."""
        return gzip.decompress(self.wire) if self.gzipped else self.wire

    @cached_property
    def body(self) -> Any:
        return json.loads(self.text) if self.text else None


def load_capture(path: Path) -> Capture:
    raw = json.loads(path.read_text())
    if "body_raw_b64" in raw:  # gzip bodies: the compressed bytes as sent
        wire = base64.b64decode(raw["body_raw_b64"])
    elif "body_raw_gzip_b64" in raw:  # large bodies, stored compacted (not compressed on the wire)
        wire = gzip.decompress(base64.b64decode(raw["body_raw_gzip_b64"]))
    else:
        wire = raw.get("body_text", "").encode("utf-8")
    assert len(wire) == int(raw["body_len"]), f"{path}: body bytes do not match body_len"
    capture = Capture(
        client=path.parent.name,
        number=path.stem,
        scenario=raw["scenario"],
        method=raw["method"],
        path=raw["path"],
        headers=tuple((name, value) for name, value in raw["headers_list"]),
        wire=wire,
        responded_status=int(raw["responded_status"]),
    )
    if "body_text" in raw and capture.gzipped:
        assert capture.text.decode("utf-8") == raw["body_text"], f"{path}: gzip body != body_text"
    return capture


def load_captures() -> list[Capture]:
    if not WIRE_DIR.is_dir():
        return []
    return [load_capture(path) for path in sorted(WIRE_DIR.glob("*/[0-9][0-9][0-9].json"))]


CAPTURES = load_captures()
BY_ID = {capture.id: capture for capture in CAPTURES}
POSTS = [c for c in CAPTURES if c.method == "POST"]
PREFLIGHTS = [c for c in CAPTURES if c.method == "OPTIONS"]


def replay_request(capture: Capture, key: str | None) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body to send: every placeholder key → ``key``; ``key=None`` removes every key.

    Host and Content-Length are dropped (the test client sets them); all other
    headers — Content-Type and Content-Encoding included — go as captured.
    """
    placeholders: set[str] = set()
    headers: list[tuple[str, str]] = []
    for name, value in capture.headers:
        lower = name.lower()
        if lower in ("host", "content-length"):
            continue
        if lower == "authorization" and value.startswith("Basic "):
            user, _, password = base64.b64decode(value[6:]).decode().partition(":")
            placeholders.add(user)
            if key is None:
                continue
            value = "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()
        elif lower == "x-write-key":
            placeholders.add(value)
            if key is None:
                continue
            value = key
        headers.append((name, value))

    body = capture.body
    body_key = body.get("writeKey") if isinstance(body, dict) else None
    if not isinstance(body_key, str):
        return headers, capture.wire
    if key is None:
        copy = json.loads(capture.text)
        del copy["writeKey"]
        text = json.dumps(copy).encode()
    elif "***" in body_key:  # Jitsu's masked key: left alone
        return headers, capture.wire
    else:
        placeholders.add(body_key)
        text = capture.text
        for placeholder in placeholders:  # only whole JSON strings, so `WK_x` never touches `WK_x_gz`
            text = text.replace(json.dumps(placeholder).encode(), json.dumps(key).encode())
    if text == capture.text:
        return headers, capture.wire
    return headers, (gzip.compress(text, mtime=0) if capture.gzipped else text)


def send(client: Any, capture: Capture, key: str | None) -> Any:
    headers, body = replay_request(capture, key)
    return client.open(capture.path, method=capture.method, headers=headers, data=body)
