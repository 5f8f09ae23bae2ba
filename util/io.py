"""Files that are never left half-written: write to a temporary file beside the target, flush, fsync,
then rename it over the target (atomic on POSIX and Windows). A failure keeps the previous content
and removes the temporary file. Used for checkpoints and for the derived dataset files."""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, binary: bool = False) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block succeeds.

    Parent directories are created; the directory entry is synced after the rename where the
    platform allows it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns ``path``."""
    with atomic_write(path) as file:
        json.dump(data, file)
    return Path(path)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; directories cannot be opened this way on Windows."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
