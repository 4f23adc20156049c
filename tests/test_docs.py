"""The documentation runs: every ```sh block of README.md and docs/*.md, page by page, as a reader would.

A page is one session, its blocks run by bash (``-euo pipefail``) in the order
they appear, in a fresh folder that looks like a clone of this repository (the
tracked top-level entries linked in), with ``drengr`` being the one these
tests import. What the session changes in a block before running it, and nothing
else:

- the ports the docs use (8080, 8081, 8082) become free ports, and
  ``DRENGR_PORT`` is the one 8080 became, so a bare ``drengr serve`` takes it;
- a key placeholder (``drengr_pk_YOUR_KEY``, ``drengr_pk_…``, ``drengr_sk_…``)
  becomes the last key of that kind an earlier block printed, as a reader
  copies it from the terminal;
- ``postgresql://drengr@db.internal/drengr`` becomes a fresh schema on the
  tests' PostgreSQL server, ``/var/lib/drengr`` and ``/var/backups/drengr``
  folders of the session's;
- ``pip install …`` is checked, not run: what it names must already be
  installed here, at a version it allows (installing is ``.ci/run``'s job);
- ``python -m pytest …`` runs with ``--collect-only -q``: the command, its
  paths and options are right (the suite itself runs the tests and benchmarks).

A block that starts a server in the foreground (``drengr serve``,
``gunicorn``) runs in the background: the session waits for it to answer
``/health``, then goes on; the next server block, or the end of the page,
stops it with SIGINT, as Ctrl-C would. A page that uses the server without
starting one (its URL, a key, ``drengr.db``) gets the README's: ``drengr
serve`` on a new database, started first. A ```text block right after a
```sh block is that block's exact output; ```console blocks are illustrative
and not run, so a command the suite cannot run (systemctl, a root install)
goes there. A block that needs a tool this machine lacks (curl, sqlite3, jq,
gunicorn, PostgreSQL) is skipped with a line saying what to install, and under
``CI=true`` fails, as the other live tests do.
"""

import ast
import contextlib
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import pytest

import drengr

from .support.realserver import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# The drengr these tests import (src/, or an install): the blocks run the same one.
DRENGR_PATH = Path(drengr.__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CI_RUN = ROOT / ".ci" / "run"
IN_CI = bool(os.environ.get("CI"))

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
DOC_PORTS = ("8080", "8081", "8082")
KEY_PLACEHOLDER = re.compile(r"drengr_(pk|sk)_(?:YOUR_KEY|…)")
PRINTED_KEY = re.compile(r"\bdrengr_(pk|sk)_[A-Za-z0-9_-]{16,}")
DOC_STORE = "postgresql://drengr@db.internal/drengr"
DOC_FOLDERS = {"/var/lib/drengr": "lib", "/var/backups/drengr": "backups"}  # -> session folders
SERVER = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:drengr\s+serve|gunicorn)\b(?!.*&\s*$)")
PYTEST = re.compile(r"(\bpython -m pytest\b[^\n;&|]*)")
BLOCK_HANG_GUARD_S = 300  # a hang guard: a block that runs longer is stuck, not slow
SERVER_HANG_GUARD_S = 60
# Tools a block may call, how to tell they are here, and what to install when not.
TOOLS = {
    "curl": (lambda: shutil.which("curl") is not None, "apt-get install curl"),
    "sqlite3": (lambda: shutil.which("sqlite3") is not None, "apt-get install sqlite3"),
    "jq": (lambda: shutil.which("jq") is not None, "apt-get install jq"),
    "gunicorn": (lambda: find_spec("gunicorn") is not None, "pip install '.[test]'"),
}
# The tracked top-level entries a clone has; the session folder links them.
CLONE = ("README.md", "bench", "docs", "pyproject.toml", "setup.py", "src", "tests", "wsgi.py", ".ci")

PIP_SHIM = '''#!{python}
"""`pip` in the docs' blocks: checks that what a block installs is installed here; installs nothing."""
import pathlib, re, sys, tomllib
from importlib import metadata
from packaging.requirements import Requirement

args = sys.argv[1:]
if not args or args[0] != "install" or any(a.startswith("-") for a in args[1:]):
    sys.exit(f"the docs runner expects `pip install NAME…`, not `pip {{' '.join(args)}}`")
wanted = []
for arg in args[1:]:
    local = re.fullmatch(r"\\.(?:\\[([\\w,-]+)\\])?", arg)
    if not local:
        wanted.append(arg)
        continue
    project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
    wanted += project["dependencies"]
    for extra in filter(None, (local.group(1) or "").split(",")):
        if extra not in project["optional-dependencies"]:
            sys.exit(f"pyproject.toml has no extra [{{extra}}]")
        wanted += project["optional-dependencies"][extra]
missing = []
for requirement in map(Requirement, wanted):
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        missing.append(str(requirement))
        continue
    if not requirement.specifier.contains(version, prereleases=True):
        missing.append(f"{{requirement}} (found {{version}})")
if missing:
    pathlib.Path({missing_file!r}).write_text("pip install " + " ".join(map(repr, missing)))
    sys.exit(1)
'''


@dataclass
class Block:
    page: Path
    line: int
    text: str
    output: str | None  # the ```text block right after it: its exact output

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def commands(self) -> list[str]:
        """The block's commands, one a line: continuations joined, comments and blank lines gone."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [
            line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]

    @property
    def starts_server(self) -> bool:
        return bool(self.commands) and bool(SERVER.match(self.commands[-1].split("&&")[-1].strip()))


def fences(page: Path) -> list[tuple[int, str, str, int, int]]:
    """(line, language, body, start, end) of every fenced block of ``page``."""
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2), m.start(), m.end())
        for m in FENCE.finditer(text)
    ]


def sh_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = fences(page)
    blocks = []
    for index, (line, language, body, _, end) in enumerate(found):
        if language != "sh":
            continue
        output = None
        if index + 1 < len(found):
            _, next_language, next_body, next_start, _ = found[index + 1]
            if next_language == "text" and not text[end:next_start].strip():
                output = next_body
        blocks.append(Block(page, line, body, output))
    return blocks


PAGES_WITH_SH = [page for page in PAGES if sh_blocks(page)]


class Session:
    """One page's run: its folder, environment, ports, the keys it was shown and its servers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for name in CLONE:
            (folder / name).symlink_to(ROOT / name)
        shims = folder / ".shims"
        shims.mkdir()
        self.missing_file = folder / ".not-installed"
        python = sys.executable
        for name, script in {
            "pip": PIP_SHIM.format(python=python, missing_file=str(self.missing_file)),
            "python": f'#!/bin/sh\nexec "{python}" "$@"\n',
            "drengr": f'#!/bin/sh\nexec "{python}" -m drengr "$@"\n',
            "gunicorn": f'#!/bin/sh\nexec "{python}" -m gunicorn "$@"\n',
            "sqlite-utils": f'#!/bin/sh\nexec "{python}" -m sqlite_utils "$@"\n',
        }.items():
            (shims / name).write_text(script)
            (shims / name).chmod(0o755)
        self.ports = {port: str(free_port()) for port in DOC_PORTS}
        self.keys: dict[str, str] = {}
        self.store: str | None = None
        self.servers: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith("DRENGR_") or k == "DRENGR_CLOCK_OFFSET"
        }
        self.env.update(
            PATH=os.pathsep.join([str(shims), os.environ.get("PATH", "")]),
            PYTHONPATH=str(DRENGR_PATH),
            DRENGR_PORT=self.ports["8080"],
        )
        self.skipped: list[str] = []
        self._stack = contextlib.ExitStack()

    # ------------------------------------------------------------------ what a block becomes

    def personalise(self, block: Block) -> str:
        text = block.text
        for port, free in self.ports.items():
            text = re.sub(rf"\b{port}\b", free, text)
        for folder, name in DOC_FOLDERS.items():
            (self.folder / name).mkdir(exist_ok=True)
            text = text.replace(folder, str(self.folder / name))
        if DOC_STORE in text:
            assert self.store is not None
            text = text.replace(DOC_STORE, f"'{self.store}'")

        def key(match: re.Match[str]) -> str:
            kind = match.group(1)
            assert kind in self.keys, f"{block.where} uses a drengr_{kind}_ key before any block printed one"
            return self.keys[kind]

        text = KEY_PLACEHOLDER.sub(key, text)
        return PYTEST.sub(r"\1 --collect-only -q", text)

    def missing(self, block: Block) -> str | None:
        """What this machine lacks to run ``block``, as what to install; None when nothing."""
        for tool, (present, install) in TOOLS.items():
            if (
                re.search(rf"(^|[|;&(]\s*|\$\(\s*|=\S+\s+){re.escape(tool)}\b", block.text, re.M)
                and not present()
            ):
                return f"{tool} is not installed ({install})"
        if DOC_STORE in block.text and self.store is None:
            try:
                self.store = self._stack.enter_context(postgres_schema())
            except pytest.skip.Exception as skipped:
                return str(skipped)
        return None

    # ------------------------------------------------------------------ running

    def run(self, block: Block) -> None:
        why = self.missing(block)
        if why:
            if IN_CI:
                pytest.fail(f"{block.where}: {why} (CI is set: .ci/run should have installed it)")
            self.skipped.append(f"{block.where}: {why}")
            return
        if block.starts_server:
            self.start_server(block)
            return
        script = self.personalise(block)
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script], cwd=self.folder, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=BLOCK_HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group start_new_session made for this block
            process.communicate()
            raise AssertionError(
                f"{block.where} ran past the {BLOCK_HANG_GUARD_S} s hang guard:\n{script}"
            ) from None
        if self.missing_file.exists():
            why = self.missing_file.read_text()
            self.missing_file.unlink()
            if IN_CI:
                pytest.fail(f"{block.where}: not installed here ({why})")
            self.skipped.append(f"{block.where}: {why}")
            return
        assert process.returncode == 0, (
            f"{block.where} failed ({process.returncode}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )
        self.learn_keys(stdout)
        if block.output is not None:
            assert stdout.strip() == block.output.strip(), (
                f"{block.where} printed:\n{stdout}\n--- stderr\n{stderr}"
            )

    def learn_keys(self, output: str) -> None:
        for match in PRINTED_KEY.finditer(output):
            self.keys[match.group(1)] = match.group(0)

    def start_server(self, block: Block) -> None:
        self.stop_servers()
        script = self.personalise(block)
        command = block.commands[-1]
        port = re.search(r"(?:--port[ =]|-b \S*:|DRENGR_PORT=)(\d+)", self.personalise_text(command))
        prefix = re.search(r"(?:--prefix[ =]|DRENGR_PREFIX=)(/\S+)", command)
        url_port = int(port.group(1)) if port else int(self.ports["8080"])
        log = self.folder / f".server-{len(self.servers)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script], cwd=self.folder, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.servers.append((block, process, log))
        health = (prefix.group(1).rstrip("/") if prefix else "") + "/health"
        deadline = time.monotonic() + SERVER_HANG_GUARD_S
        while True:
            if self.missing_file.exists():
                self.stop_servers()
                why = self.missing_file.read_text()
                self.missing_file.unlink()
                if IN_CI:
                    pytest.fail(f"{block.where}: not installed here ({why})")
                self.skipped.append(f"{block.where}: {why}")
                return
            if process.poll() is not None:
                raise AssertionError(
                    f"{block.where} exited ({process.returncode}):\n{script}\n{log.read_text()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=5)
                try:
                    conn.request("GET", health)
                    if conn.getresponse().status == 200:
                        break
                finally:
                    conn.close()
            assert time.monotonic() < deadline, (
                f"{block.where}: no 200 on {health} ({SERVER_HANG_GUARD_S} s hang guard)"
            )
            time.sleep(0.1)
        self.learn_keys(log.read_text())

    def personalise_text(self, command: str) -> str:
        for port, free in self.ports.items():
            command = re.sub(rf"\b{port}\b", free, command)
        return command

    def stop_servers(self) -> None:
        while self.servers:
            block, process, log = self.servers.pop()
            if process.poll() is None:
                # The group start_new_session made for this block. gunicorn is stopped as its supervisors
                # stop it, with SIGTERM: its SIGINT handler can deadlock a gthread worker that is inside
                # ThreadPoolExecutor.submit (the handler's shutdown() takes the lock submit holds), which
                # then waits out the 30 s graceful timeout.
                stop = signal.SIGTERM if "gunicorn" in block.commands[-1] else signal.SIGINT
                os.killpg(process.pid, stop)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    raise AssertionError(
                        f"{block.where} did not stop on {stop.name}:\n{log.read_text()}"
                    ) from None

    def close(self) -> None:
        try:
            self.stop_servers()
        finally:
            self._stack.close()


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URI on the tests' PostgreSQL server whose connections use a fresh schema (skips when there is none)."""
    if find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed: runs with it (pip install '.[test]', as in CI)")
    from tests.support.postgres import fresh_schema

    with fresh_schema("docs_") as uri:
        yield uri


def needs_readme_server(blocks: list[Block]) -> bool:
    uses = re.compile(r"127\.0\.0\.1:8080|drengr_pk_(?:YOUR_KEY|…)|drengr\.db\b")
    return not any(block.starts_server for block in blocks) and any(
        uses.search(block.text) for block in blocks
    )


@pytest.mark.parametrize("page", PAGES_WITH_SH, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_shell_block_runs_as_written(page: Path, tmp_path: Path) -> None:
    blocks = sh_blocks(page)
    session = Session(tmp_path)
    try:
        if needs_readme_server(blocks):
            session.start_server(Block(ROOT / "README.md", 0, "drengr serve\n", None))
        for block in blocks:
            session.run(block)
    finally:
        session.close()
    if session.skipped:
        ran = len(blocks) - len(session.skipped)
        pytest.skip(f"{ran} of {len(blocks)} blocks ran; not here: " + "; ".join(session.skipped))


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    marker = "# The README's test command, verbatim:"
    lines = CI_RUN.read_text().splitlines()
    command = lines[lines.index(marker) + 1]
    readme = [block.text.strip() for block in sh_blocks(ROOT / "README.md")]
    assert command in readme, f".ci/run runs {command!r}; the README's blocks are {readme}"
    assert "pytest" in command


def test_every_fence_says_its_language() -> None:
    """A bare ``` would be neither run nor marked as output; ```sh holds commands only (no prompts)."""
    for page in PAGES:
        for line, language, body, _, _ in fences(page):
            where = f"{page.relative_to(ROOT)}:{line}"
            assert language, f"{where}: a fence without a language"
            if language == "sh":
                assert not re.search(r"^\$ ", body, re.M), (
                    f"{where}: a prompt in a ```sh block (use ```console)"
                )


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_lead_to_files(page: Path) -> None:
    text = FENCE.sub("", page.read_text())
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [link for link in links if "://" not in link and not (page.parent / link).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def test_the_tests_the_docs_and_deploy_files_cite_exist() -> None:
    """A page that says "tests/test_x.py checks this" keeps its word only while that file exists."""
    cited = {
        (path.relative_to(ROOT), name)
        for path in [*PAGES, *sorted((ROOT / "deploy").iterdir())]
        for name in re.findall(r"\btests/[\w/]+\.py\b", path.read_text())
    }
    assert cited, "no page cites a test: the pattern is wrong"
    missing = sorted((str(page), name) for page, name in cited if not (ROOT / name).exists())
    assert not missing, missing


def test_deploying_shows_deploy_nginx_conf_verbatim() -> None:
    """The nginx tests run deploy/nginx.conf itself (tests/support/nginx.py): the docs show that file."""
    [config] = [
        body for _, language, body, _, _ in fences(ROOT / "docs" / "deploying.md") if language == "nginx"
    ]
    shipped = (ROOT / "deploy" / "nginx.conf").read_text()
    assert config == shipped, "docs/deploying.md's nginx block is not deploy/nginx.conf as it is"


# --------------------------------------------------------------------------- docs/architecture.md's import rules

SRC = ROOT / "src"


def layer_table() -> list[tuple[str, list[str], set[str]]]:
    """(layer, module patterns, layers it may import) from docs/architecture.md's table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("| layer | modules | may import from drengr |") :].split("\n\n")[0]
    layers = []
    for row in table.splitlines()[2:]:
        name, modules, allowed = (cell.strip() for cell in row.strip("|").split("|"))
        patterns = re.findall(r"`(drengr[\w.*]*)`", modules)
        layers.append(
            (name, patterns, set() if allowed == "nothing" else {a.strip() for a in allowed.split(",")})
        )
    return layers


def source_modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "drengr").rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            parts = path.relative_to(SRC).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def drengr_imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The drengr modules ``module`` imports (``from drengr import clock`` is drengr.clock)."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    statements: list[tuple[int, str, list[str]]] = []  # (dots, module, names); names empty for `import x`
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                statements += [(0, alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                statements.append((node.level, node.module or "", [alias.name for alias in node.names]))
    else:  # Cython: its Python-level imports are one line each
        for line in path.read_text().splitlines():
            if match := re.match(r"\s*import ([\w.]+)", line):
                statements.append((0, match.group(1), []))
            elif match := re.match(r"\s*from (\.*)([\w.]*) c?import ([\w, ]+)", line):
                statements.append((len(match.group(1)), match.group(2), match.group(3).split(",")))
    found = set()
    for dots, name, names in statements:
        base = package.rsplit(".", dots - 1)[0] if dots else ""
        target = ".".join(part for part in (base, name) if part)
        if not target.startswith("drengr"):
            continue
        if not names:
            found.add(target)
        for imported in (n.strip() for n in names if n.strip()):
            sub = f"{target}.{imported}"
            found.add(sub if sub in modules else target)
    return found - {module}


def layer_of(module: str, layers: list[tuple[str, list[str], set[str]]]) -> str | None:
    for name, patterns, _ in layers:
        for pattern in patterns:
            if module == pattern.removesuffix(".*") or (
                pattern.endswith(".*") and module.startswith(pattern[:-1])
            ):
                return name
    return None


def test_every_import_keeps_to_the_layers_of_architecture_md() -> None:
    layers = layer_table()
    allowed = {name: may | {name} for name, _, may in layers}
    modules = source_modules()
    assert "drengr.core.machine" in modules and len(layers) >= 5
    unplaced = [module for module in modules if layer_of(module, layers) is None]
    assert not unplaced, f"modules in no layer of docs/architecture.md: {unplaced}"
    breaks = []
    for module, path in modules.items():
        layer = layer_of(module, layers)
        assert layer is not None
        for target in sorted(drengr_imports(module, path, modules)):
            target_layer = layer_of(target, layers)
            if target_layer not in allowed[layer]:
                breaks.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not breaks, "imports docs/architecture.md does not allow:\n" + "\n".join(breaks)
