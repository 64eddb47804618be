"""Files: atomic writes (a reader sees the old file or the complete new one, never a
partial one), digests, and torch archives read as data only."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "file_digest", "load_data_only"]


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

    Parameters
    ----------
    path : str or Path
        The file to write.
    write : callable
        ``write(stream)`` writes the content to a binary stream.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            recording = _RecordingStream(stream)
            try:
                write(recording)
            except RuntimeError as exc:
                # torch.save's C++ writer turns a failed write (a full disk) into a
                # RuntimeError ("unexpected pos ..."): report the I/O error it hides
                error = _write_error(recording, path)
                if error is None:
                    raise
                raise error from exc
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _RecordingStream:
    """A binary stream that keeps the ``OSError`` of a failed ``write``."""

    def __init__(self, stream):
        self.stream, self.error = stream, None

    def write(self, data):
        try:
            return self.stream.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self.stream, name)


# Below this much free space a writer's failure is taken for a full disk.
FULL_DISK_BYTES = 1 << 20


def _write_error(recording: _RecordingStream, path: Path) -> OSError | None:
    if recording.error is not None:
        return OSError(recording.error.errno, recording.error.strerror or str(recording.error),
                       str(path))
    try:
        stats = os.statvfs(path.parent or ".")
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < FULL_DISK_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_write` does.

    Parameters
    ----------
    path : str or Path
        The file to write.
    text : str
        Its whole content.
    """
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


def load_data_only(path):
    """``torch.load(path, weights_only=True)`` onto the CPU, its refusal in one sentence.

    The restricted unpickler builds tensors and plain containers only; a file that asks for
    anything else (a global such as ``os.system``, an unknown opcode) is refused.  torch's
    own message is several lines long and advises loading with ``weights_only=False``,
    which would run the file's code: the ``ValueError`` raised here keeps only what the
    file held.

    Parameters
    ----------
    path : str or Path
        The archive.

    Raises
    ------
    ValueError
        The file is not an archive of data (``OSError`` for a file that cannot be read).
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as exc:
        skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
        details = [line.strip() for line in str(exc).splitlines()
                   if line.strip() and not line.strip().startswith(skip)]
        raise ValueError("it holds more than data, and is not run: "
                         + (" ".join(details).rstrip(".")
                            or "refused by torch's restricted unpickler")) from exc
    except Exception as exc:  # a damaged or foreign archive: zip, pickle or tensor errors
        message = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
        raise ValueError(f"it is not a readable torch archive ({message})") from exc
