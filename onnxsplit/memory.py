"""Process memory setting for converting large models."""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def return_large_blocks_to_os(threshold: int = 1 << 20) -> bool:
    """Serve allocations of `threshold` bytes or more with mmap (glibc only; else a no-op).

    Conversion makes and drops several transient copies of the weights; glibc's adaptive
    threshold otherwise keeps freed copies in the heap, so they count in the peak RSS again and
    again (docs/inputs.md, Resources). Returns whether the setting was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
