"""Seeded, realistic request bodies for the benchmarks: what analytics-python sends.

Every body is a ``{"batch": [...], "sentAt": ...}`` JSON object like the ones
analytics-python posts to ``/v1/batch`` (see ``tests/data/wire/``): tracks with
context (library, app, os, device, ip, locale), 10–20 properties including a
nested object and a list, some identify/page/screen/group items, messageIds and
timestamps. The same seed always gives the same bytes, so benchmarks can be
compared run to run. Imports only the standard library.
"""

import json
import random
import uuid
from typing import Any

RECEIVED_AT_MS = 1_795_661_624_801  # 2026-11-26T02:53:44.801Z, the clock the benchmarks pass in
MAX_BODY_BYTES = 512_000

EVENT_NAMES = [
    "Product Viewed", "Product Added", "Order Completed", "Checkout Started", "Signed Up",
    "Video Played", "Search Performed", "Button Clicked", "Article Read", "Subscription Renewed",
]  # fmt: skip
PAGES = ["Home", "Pricing", "Docs", "Blog", "Checkout", "Account"]
CATEGORIES = ["shoes", "books", "garden", "toys", "music", "kitchen", "outdoor"]
CURRENCIES = ["USD", "EUR", "GBP", "NOK", "JPY"]
OS = [("iOS", "17.4"), ("Android", "14"), ("Mac OS X", "14.3.1"), ("Windows", "10")]
DEVICES = ["iPhone15,2", "Pixel 8", "SM-S911B", "MacBookPro18,3"]


def _iso(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    days, rest = divmod(seconds, 86_400)
    # 1970-01-01 + days, by hand: the bench must not depend on datetime's locale/tz handling.
    year, month, day = _civil(days)
    return f"{year:04d}-{month:02d}-{day:02d}T{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}.{millis:03d}+00:00"


def _civil(days: int) -> tuple[int, int, int]:
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, doy - (153 * mp + 2) // 5 + 1


def _properties(rng: random.Random, count: int) -> dict[str, Any]:
    props: dict[str, Any] = {
        "product_id": f"sku-{rng.randrange(100_000):05d}",
        "category": rng.choice(CATEGORIES),
        "price": round(rng.uniform(1, 500), 2),
        "quantity": rng.randint(1, 5),
        "currency": rng.choice(CURRENCIES),
        "revenue": round(rng.uniform(1, 900), 2),
        "in_stock": rng.random() < 0.8,
        "url": f"https://shop.example.com/p/{rng.randrange(10_000)}?ref=home",
        "variant": {
            "color": rng.choice(["red", "blue", "black"]),
            "size": rng.choice(["S", "M", "L"]),
            "weight_g": rng.randint(50, 3000),
        },
        "tags": rng.sample(["sale", "new", "gift", "eco", "limited"], k=2),
        "position": rng.randint(1, 50),
        "coupon": None,
        "rating": round(rng.uniform(1, 5), 1),
        "email": "someone@example.com",  # dropped as PII
        "list_id": f"list-{rng.randrange(100)}",
        "search_query": rng.choice(["running shoes", "garden hose", "vinyl", "cast iron pan"]),
        "brand": rng.choice(["Acme", "Globex", "Initech", "Umbrella"]),
        "discount": round(rng.uniform(0, 20), 2),
        "session_count": rng.randint(1, 400),
        "experiment": {"id": f"exp-{rng.randrange(20)}", "arm": rng.choice(["a", "b"])},
    }
    keys = list(props)
    return {key: props[key] for key in keys[:count]}


def _context(rng: random.Random) -> dict[str, Any]:
    os_name, os_version = rng.choice(OS)
    return {
        "library": {"name": "analytics-python", "version": "2.4.0"},
        "ip": f"203.0.113.{rng.randrange(256)}",
        "locale": "en-US",
        "app": {
            "name": "Shop",
            "version": f"4.{rng.randrange(20)}.{rng.randrange(10)}",
            "build": str(rng.randrange(9999)),
        },
        "os": {"name": os_name, "version": os_version},
        "device": {"model": rng.choice(DEVICES), "manufacturer": "Acme"},
    }


def event(rng: random.Random, now_ms: int = RECEIVED_AT_MS) -> dict[str, Any]:
    """One analytics-python message: mostly tracks, some identify/page/screen/group."""
    kind = rng.choices(["track", "identify", "page", "screen", "group"], weights=[80, 6, 8, 4, 2])[0]
    item: dict[str, Any] = {
        "integrations": {},
        "anonymousId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "userId": f"user-{rng.randrange(50_000)}" if rng.random() < 0.7 else None,
        "timestamp": _iso(now_ms - rng.randrange(120_000)),
        "context": _context(rng),
        "type": kind,
        "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    }
    if kind == "track":
        item["event"] = rng.choice(EVENT_NAMES)
        item["properties"] = _properties(rng, rng.randint(10, 20))
    elif kind in ("page", "screen"):
        item["name"] = rng.choice(PAGES)
        item["properties"] = _properties(rng, rng.randint(10, 14))
    elif kind == "identify":
        item["traits"] = {
            "plan": rng.choice(["free", "pro"]),
            "email": "x@example.com",
            "logins": rng.randint(1, 99),
        }
    else:
        item["groupId"] = f"org-{rng.randrange(500)}"
        item["traits"] = {"industry": "retail", "employees": rng.randint(1, 5000)}
    return item


def batch_body(events: int, seed: int = 1) -> bytes:
    """A ``/v1/batch`` body with ``events`` items, as analytics-python serialises it."""
    rng = random.Random(seed)
    body = {"batch": [event(rng) for _ in range(events)], "sentAt": _iso(RECEIVED_AT_MS - 5)}
    return json.dumps(body).encode()


def body_of_size(max_bytes: int = MAX_BODY_BYTES, seed: int = 2) -> tuple[bytes, int]:
    """The largest batch body under ``max_bytes`` (docs/mapping.md "Limits and responses") and its item count."""
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    size = len('{"batch": [], "sentAt": ""}') + 29
    while True:
        item = event(rng)
        item_size = len(json.dumps(item)) + 2
        if size + item_size > max_bytes:
            break
        items.append(item)
        size += item_size
    body = json.dumps({"batch": items, "sentAt": _iso(RECEIVED_AT_MS - 5)}).encode()
    assert len(body) <= max_bytes
    return body, len(items)
