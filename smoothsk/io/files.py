"""Atomic files: a reader sees the old file or the complete new one, never a partial one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "file_digest"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable) -> None:
    """Write ``path`` atomically: ``write(stream)`` fills a temporary file in the same
    directory (binary mode), which is fsynced and then renamed over ``path``.

    A crash, a full disk or an exception in ``write`` leaves ``path`` as it was (or
    absent) and no temporary file behind.  The new file gets the usual mode
    (``0o666`` minus the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_write` does."""
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))


def file_digest(path) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks).

    Parameters
    ----------
    path : path
        The file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
