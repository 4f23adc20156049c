"""nginx for the tests: the binary, and deploy/nginx.conf as shipped, rendered for a test's ports.

The tests run the shipped file, not a copy of it: only addresses, the log and
temporary paths change (and a test may shorten a named timeout to stay fast).
"""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx.conf"
IN_CI = bool(os.environ.get("CI"))

_MEMBER = "        server 127.0.0.1:8081 max_fails=3 fail_timeout=5s;\n"
_LISTEN = "        listen 8080;\n"
_PROXY_PASS = "proxy_pass http://drengr;"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        message = "nginx is not installed (apt-get install -y nginx)"
        if IN_CI:
            pytest.fail(message + " (CI is set: these tests must run)")
        pytest.skip(message)
    return found


def shipped_nginx_conf(folder: Path, servers: dict[int, list[int]], **directives: str) -> str:
    """deploy/nginx.conf with one upstream and one server block per ``{listen port: node ports}``;
    logs, pid and temporary files in ``folder``; ``directives`` replace a location's value
    (``proxy_read_timeout="1s"``)."""
    text = SHIPPED.read_text()
    up_start = text.index("    upstream drengr {\n")
    up_end = text.index("\n    }\n", up_start) + len("\n    }\n")
    server_start = text.index("    server {\n")
    server_end = text.rindex("}")  # the http block's own
    upstream, server = text[up_start:up_end], text[server_start:server_end]
    assert upstream.count(_MEMBER) == 1 and server.count(_LISTEN) == 1 and server.count(_PROXY_PASS) == 1
    for name, value in directives.items():
        line = next(line for line in server.splitlines() if line.strip().startswith(name + " "))
        server = server.replace(line, line[: line.index(name)] + f"{name} {value};", 1)
    upstreams, blocks = [], []
    for n, (listen_port, node_ports) in enumerate(servers.items()):
        members = "".join(_MEMBER.replace("127.0.0.1:8081", f"127.0.0.1:{port}") for port in node_ports)
        upstreams.append(
            upstream.replace("upstream drengr {", f"upstream drengr{n} {{").replace(_MEMBER, members)
        )
        blocks.append(
            server.replace(_LISTEN, f"        listen 127.0.0.1:{listen_port};\n").replace(
                _PROXY_PASS, f"proxy_pass http://drengr{n};"
            )
        )
    text = (
        text[:up_start]
        + "".join(upstreams)
        + text[up_end:server_start]
        + "\n".join(blocks)
        + text[server_end:]
    )
    text = text.replace("/var/log/nginx/drengr.log", str(folder / "access.log"))
    paths = "".join(
        f"    {kind}_temp_path {folder / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + paths, 1)
    main = f"daemon off;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
    return main + ("user root;\n" if os.geteuid() == 0 else "") + text
