"""The repository stands alone: nothing in it refers to a path outside it, and every
citation of our docs names a page and headings that exist.

A fresh clone has only what ``git ls-files`` lists, so that is what is read (text
files only: a file holding a NUL byte or invalid UTF-8 is binary and skipped).
Three ways a file can point outside the clone are caught:

- a relative path that climbs above the repository root, counted from the
  file's own folder (from README.md at the root, any ``..`` segment climbs out);
- ``Path(__file__)`` walked up (``.parent``, ``.parents[k]``) above the root;
- a path into the folder this project was once developed beside (below:
  ``FOREIGN``), in any form.

A citation is a docs page path followed by quoted headings, as code and tests
write them: the page, then ``"Heading"``, or several joined by ``,`` or ``and``.
The page must be tracked and each heading must be one of its headings (backticks
ignored). The detectors are tested first on a table of lines, so a scan that finds
nothing means nothing is there, not that the detector is blind.

The literal strings below are assembled from pieces (``UP``, ``FILE``, ``DOCS``) so that
this file passes its own scan.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

UP = ".." + "/"
FILE = "Path(" + "__file__)"
DOCS = "docs" + "/"
FOREIGN = ("/" + "work/", UP + "shared", "PERF-NOTES" + ".md")

# A run of "../" that starts a path: not inside another path (`/v1/../x` is a URL path).
CLIMB = re.compile(r"(?<![\w./\\-])((?:\.\./)+)(?=[\w.-])")
FILE_PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(?P<chain>(?:\.parents\[\d+\]|\.parent\b)+)")
STEP = re.compile(r"\.parents\[(\d+)\]|\.parent\b")
CITATION = re.compile(
    r"(?<![\w/.-])docs/(?P<page>[A-Za-z0-9_-]+)\.md"
    r"(?P<headings>(?:(?:[ \t]+|[ \t]*\n[ \t]*)\"[^\"\n]+\")(?:(?:,[ \t]*\n?[ \t]*|[ \t]+and[ \t]+)\"[^\"\n]+\")*)?"
)
QUOTED = re.compile(r"\"([^\"\n]+)\"")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def outside_references(path: str, text: str) -> list[str]:
    """Each place in ``text`` (the file ``path``, relative to the root) that points outside the repository."""
    depth = len(Path(path).parts) - 1  # folders between the root and the file
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in CLIMB.finditer(line):
            if match.group(1).count(UP) > depth:
                found.append(f"{path}:{number}: climbs above the repository root: {line.strip()[:120]}")
        for match in FILE_PARENTS.finditer(line):
            levels = sum(int(k) + 1 if k else 1 for k in STEP.findall(match.group("chain")))
            if levels > depth + 1:  # .parent is the file's own folder
                found.append(f"{path}:{number}: Path(__file__) walked above the root: {line.strip()[:120]}")
        for foreign in FOREIGN:
            if foreign in line:
                found.append(
                    f"{path}:{number}: refers to {foreign!r} outside the repository: {line.strip()[:120]}"
                )
    return found


def citations(text: str) -> list[tuple[int, str, list[str]]]:
    """(line, page, headings) of every docs citation in ``text``."""
    return [
        (
            text.count("\n", 0, match.start()) + 1,
            match.group("page"),
            QUOTED.findall(match.group("headings") or ""),
        )
        for match in CITATION.finditer(text)
    ]


def normalised(heading: str) -> str:
    return " ".join(heading.replace("`", "").split())


def headings(markdown: str) -> set[str]:
    """The headings of a Markdown page; lines in fenced code blocks are not headings."""
    found, fenced = set(), False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            found.add(normalised(match.group(2)))
    return found


def tracked_text_files() -> dict[str, str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout ({type(error).__name__}): run from a git clone, with git installed")
    files = {}
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


# ---------------------------------------------------------------- the detectors, on a table of lines

OUTSIDE_ROWS = [
    pytest.param("README.md", f"see `{UP}shared/SPEC.md`", 2, id="root-file-climbs-and-names-shared"),
    pytest.param("README.md", f"see `{UP}other-repo/x.md`", 1, id="root-file-any-climb"),
    pytest.param("docs/mapping.md", f"[x]({UP}README.md)", 0, id="docs-page-to-the-root-is-inside"),
    pytest.param("docs/mapping.md", f"[x]({UP}{UP}elsewhere.md)", 1, id="docs-page-climbing-two-is-outside"),
    pytest.param(
        "tests/clients/node/x.js", f"require('{UP}{UP}{UP}x')", 0, id="three-up-from-three-deep-is-the-root"
    ),
    pytest.param(
        "tests/clients/node/x.js", f"require('{UP}{UP}{UP}{UP}x')", 1, id="four-up-from-three-deep-is-out"
    ),
    pytest.param("tests/test_x.py", '"/v1/' + UP + UP + 'etc/passwd"', 0, id="a-url-path-is-not-a-file-path"),
    pytest.param(
        "tests/test_x.py", f"ROOT = {FILE}.resolve().parents[1]", 0, id="parents-1-from-tests-is-root"
    ),
    pytest.param("tests/test_x.py", f'{FILE}.resolve().parents[2] / "shared"', 1, id="parents-2-from-tests"),
    pytest.param("tests/test_x.py", f"{FILE}.parent.parent.parent", 1, id="parent-chain-from-tests"),
    pytest.param("src/drengr/store/x.py", f"{FILE}.resolve().parents[3]", 0, id="parents-3-from-three-deep"),
    pytest.param("tests/test_x.py", f"{FILE}.parent / 'data' / 'wire'", 0, id="own-folder"),
    pytest.param(
        "tests/test_x.py", "DIR = '/" + "work/shared/wire'", 1, id="absolute-path-of-the-old-folder"
    ),
    pytest.param("bench/README.md", "see " + "PERF-NOTES" + ".md", 1, id="notes-kept-outside"),
]


@pytest.mark.parametrize(("path", "line", "count"), OUTSIDE_ROWS)
def test_outside_references_are_detected(path: str, line: str, count: int) -> None:
    assert len(outside_references(path, line)) == count, outside_references(path, line)


CITATION_ROWS = [
    pytest.param(f'{DOCS}mapping.md "Event mapping", row by row', [("mapping", ["Event mapping"])], id="one"),
    pytest.param(
        f'{DOCS}mapping.md "Routes", "Auth" and "Limits and responses", through',
        [("mapping", ["Routes", "Auth", "Limits and responses"])],
        id="a-list",
    ),
    pytest.param(f"per {DOCS}operating.md.", [("operating", [])], id="page-only"),
    pytest.param(f'(see\n{DOCS}mapping.md "CORS")', [("mapping", ["CORS"])], id="after-a-line-break"),
    pytest.param(f'{DOCS}mapping.md\n"CORS"', [("mapping", ["CORS"])], id="heading-on-the-next-line"),
    pytest.param(
        f'x = "{DOCS}mapping.md", "y"', [("mapping", [])], id="a-quoted-path-is-not-followed-by-a-heading"
    ),
    pytest.param(f"tests/{DOCS}x.md", [], id="not-our-docs-folder"),
]


@pytest.mark.parametrize(("text", "expected"), CITATION_ROWS)
def test_citations_are_parsed(text: str, expected: list[tuple[str, list[str]]]) -> None:
    assert [(page, names) for _, page, names in citations(text)] == expected


def test_headings_skip_code_blocks() -> None:
    page = (
        "# Title\n\n## The `semantic_events` table\n\n```sh\n# a comment, not a heading\n```\n### Routes ##\n"
    )
    assert headings(page) == {"Title", "The semantic_events table", "Routes"}


# ---------------------------------------------------------------- the repository itself


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    files = tracked_text_files()
    listed = len(files) > 100 and "README.md" in files
    assert listed, f"git ls-files listed {len(files)} text files: not this repository's checkout?"
    return files


def test_no_tracked_file_refers_to_a_path_outside_the_repository(files: dict[str, str]) -> None:
    found = [place for path, text in sorted(files.items()) for place in outside_references(path, text)]
    assert not found, "paths outside the repository (a fresh clone has none of them):\n" + "\n".join(found)


def test_every_docs_citation_names_a_page_and_headings_that_exist(files: dict[str, str]) -> None:
    pages = {
        Path(path).stem: headings(text)
        for path, text in files.items()
        if re.fullmatch(r"docs/[^/]+\.md", path)
    }
    cited, broken = 0, []
    for path, text in sorted(files.items()):
        for line, page, names in citations(text):
            cited += 1
            if page not in pages:
                broken.append(f"{path}:{line}: {DOCS}{page}.md is not a tracked page")
                continue
            broken += [
                f'{path}:{line}: {DOCS}{page}.md has no heading "{name}"'
                for name in names
                if normalised(name) not in pages[page]
            ]
    assert cited >= 20, (
        f"only {cited} citations found: the citation pattern no longer matches how code cites docs"
    )
    assert not broken, "citations of docs that do not exist:\n" + "\n".join(broken)
