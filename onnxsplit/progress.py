"""Progress bars on stderr (tqdm), shown only when stderr is a terminal.

Without tqdm, or when stderr is a pipe or a file (CI logs, `2> log`), nothing is printed.
"""

from __future__ import annotations

import sys


class _Quiet:
    """A progress bar that shows nothing."""

    n = 0
    total = None

    def update(self, step: int = 1) -> None:
        self.n += step

    def set_description_str(self, text: str, refresh: bool = True) -> None:
        pass

    def reset(self, total: int | None = None) -> None:
        self.n, self.total = 0, total

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None, desc: str, unit: str = "it", stream=None):
    """A tqdm bar on stderr (or `stream`) when it is a terminal, else a quiet stand-in; use as
    a context manager."""
    stream = sys.stderr if stream is None else stream
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return _Quiet()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Quiet()
    return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True)
