"""Writing outputs: folders created with a clear error, files written atomically.

Every file rcic writes goes through :func:`atomic_path`: it is written under a temporary name in
the same folder, then renamed over the target, so a crash, a full disk or Ctrl-C never leaves a
half-written output under the final name. A location that cannot be written (a path under a file,
no permission, no space) raises :class:`OutputError` naming it, and the temporary file is removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rcic.errors import OutputError, RcicError


def make_dir(path: str | Path) -> Path:
    """Create folder `path` (and its parents) or raise OutputError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{path}: cannot create this folder ({e.strerror or e})") from None
    return path


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on failure remove it.

    `suffix` is appended to the name (writers such as ``np.savez`` need their own extension).
    """
    path = Path(path)
    make_dir(path.parent)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, RcicError):
            raise
        raise OutputError(f"{path}: cannot be written ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_csv(frame, path: str | Path) -> None:
    """Write a pandas frame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def atomic_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
