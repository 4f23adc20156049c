"""Keep a server process's memory to what it holds: large blocks go back to the system when freed.

glibc's malloc serves a block of 128 KiB or more from a mapping of its own,
unmapped when freed; but every such free raises that threshold to the freed
block's size (up to 32 MiB). After the first large request body, then,
bodies, their rows and the writer's messages come from the threads' heaps,
and a small object allocated after one of them pins the space it leaves: a
500 KB-batch load took the server from 39 to 98 MB, against 75 MB with the
threshold fixed (``bench/bench_http.py``'s 500 KB cell;
docs/performance.md). Fixing it with ``mallopt`` turns the adjustment off.
"""

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
LARGE_BLOCK_BYTES = 128 * 1024  # glibc's own starting threshold, kept


def return_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Serve blocks of ``threshold`` bytes or more from their own mappings, always; False where there is no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to fix this way
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
