"""The server floors for bench_http.py: apps that read the body and answer 200, nothing else."""

from flask import Flask, request


def bare(environ, start_response):  # type: ignore[no-untyped-def]
    """Bare WSGI: read the body, answer {"success": true}."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    body = b'{"success": true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


flask_app = Flask("bare")


@flask_app.post("/<path:path>")
def flask_ok(path: str) -> tuple[bytes, int, dict[str, str]]:
    """Flask on waitress: read the body, answer {"success": true}."""
    request.get_data()
    return b'{"success": true}', 200, {"Content-Type": "application/json"}
