"""Path → what the request is. The event type is the last path segment.

Pure functions over the path relative to the mount point; imports nothing
outside the standard library.
"""

from enum import Enum


class Route(Enum):
    SINGLE = "single"  # the path names one event type
    BATCH = "batch"  # the path names a batch
    BODY = "body"  # no recognised segment: the body decides
    METRICS = "metrics"  # analytics-next's /v1/m: answer 200, store nothing


# Full names and the one-letter forms analytics-next and Jitsu use.
SEGMENT_TYPES = {
    "track": "track",
    "identify": "identify",
    "page": "page",
    "screen": "screen",
    "group": "group",
    "alias": "alias",
    "t": "track",
    "i": "identify",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
BATCH_SEGMENTS = frozenset({"batch", "b", "import"})  # `import` is Segment's old alias


def classify(path: str) -> tuple[Route, str | None]:
    """Return the route and, for SINGLE, the canonical event type."""
    segments = [s for s in path.split("/") if s]
    if not segments:
        return Route.BODY, None
    last = segments[-1].lower()
    if last == "m" and len(segments) >= 2 and segments[-2].lower() == "v1":
        return Route.METRICS, None
    if last in BATCH_SEGMENTS:
        return Route.BATCH, None
    event_type = SEGMENT_TYPES.get(last)
    if event_type is not None:
        return Route.SINGLE, event_type
    return Route.BODY, None


def is_source_config(path: str) -> bool:
    """RudderStack's ``/sourceConfig`` (its SDKs add or drop the trailing slash, some double the first)."""
    return [s for s in path.split("/") if s] == ["sourceConfig"]


def canonical_type(value: object) -> str | None:
    """The Segment type a body's ``type`` names, or None when unrecognised."""
    if isinstance(value, str):
        return SEGMENT_TYPES.get(value.lower())
    return None
