"""A small disk that fills up: a tmpfs of a given size (mount needs root; CI runs as root)."""

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``where`` (made here), unmounted after. Without one it skips,
    saying so in one line; under CI it fails instead, so that the disk-full test cannot go missing."""
    where.mkdir()
    if shutil.which("mount") is None:
        problem = "mount(8) is not installed"
    else:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        problem = (
            "" if result.returncode == 0 else result.stderr.strip() or f"mount exited {result.returncode}"
        )
    if problem:
        message = f"needs root for mount -t tmpfs ({problem})"
        if IN_CI:
            pytest.fail(f"{message}; CI is set: the disk-full test must run")
        pytest.skip(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system is full, down to its last partial block."""
    with open(path, "wb", buffering=0) as filler:
        for size in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * size)
