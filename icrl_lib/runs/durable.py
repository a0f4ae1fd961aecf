"""Durable file primitives: a write that is all or nothing, and an exclusive lock the kernel releases when its
holder dies (even by ``kill -9``). The run store and the context-capacity cache build on them."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from icrl_lib.errors import os_error


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a unique temporary file in the same folder, fsync, then rename.

    Two writers never share a temporary file, and a reader sees the old or the new content, never a mix.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise os_error("writing", path, err) from None
    return path


@contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True) -> Iterator[Any]:
    """Exclusive ``flock`` on ``path`` (created if missing) while the block runs; the open file is yielded.

    With ``blocking=False`` a lock held elsewhere raises ``BlockingIOError`` at once.
    """
    import fcntl

    path = Path(path)
    try:
        fh = open(path, "a+", encoding="utf-8")
    except OSError as err:
        raise os_error("creating the lock file", path, err) from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise
        except OSError as err:  # e.g. a file system without lock support
            raise os_error("locking", path, err, "put output_dir on a local or NFSv4 file system") from None
        yield fh
    finally:
        fh.close()  # closing the descriptor releases the lock
