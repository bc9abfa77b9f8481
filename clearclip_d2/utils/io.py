"""File writes: atomic ones (a reader never sees a half-written file), file hashes, and the one
non-atomic write the project makes, to a /proc control file (kept here, where the static check
of tests/test_atomic_files.py allows raw writes)."""

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", durable: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    On an exception the temporary file is removed and ``path`` is left as it was. ``durable``:
    the data reach the disk (fsync) before the rename; without it a crash of the machine (not of
    the process) may leave the file empty, so only for files whose readers check them.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600 files
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise


def check_writable_folder(folder: str, key: str = "OUTPUT_DIR") -> None:
    """Create ``folder`` if needed and write (and sync) a small probe file in it, so that an
    unwritable folder or a full disk is named in one line before any work is done."""
    from .errors import ClearCLIPError

    try:
        os.makedirs(folder, exist_ok=True)
        with atomic_write(os.path.join(folder, ".clearclip_d2.write_probe"), "wb") as f:
            f.write(b"\0" * 4096)
        os.remove(os.path.join(folder, ".clearclip_d2.write_probe"))
    except OSError as e:
        full = e.errno == errno.ENOSPC or e.errno == errno.EDQUOT
        fix = "free some space" if full else "choose a folder you can write to"
        raise ClearCLIPError(f"{key} {folder} cannot be written ({e.strerror or type(e).__name__}); {fix} or set another {key}") from e


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN is written as null)."""
    with atomic_write(path, "w") as f:
        json.dump(_nan_to_none(obj), f, indent=2, sort_keys=False)
        f.write("\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return _nan_to_none(obj.item())
    return obj


_SHA256_CACHE: dict = {}


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's content; remembered per (path, size, mtime) in this process."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk_bytes), b""):
                digest.update(block)
        _SHA256_CACHE[key] = digest.hexdigest()
    return _SHA256_CACHE[key]


def write_proc_control(path: str, text: str) -> None:
    """Write ``text`` to a Linux control file under ``/proc`` (e.g. ``/proc/self/clear_refs``):
    a command to the kernel, not a data file, so there is nothing to make atomic."""
    if not os.path.abspath(path).startswith("/proc/"):
        raise ValueError(f"{path} is not a /proc control file; write data files with atomic_write")
    with open(path, "w") as f:
        f.write(text)
