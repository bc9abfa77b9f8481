"""One run per output folder: a lock held on ``OUTPUT_DIR`` for the whole life of a run.

Two runs writing into one folder would mix their results (a resume could count the other run's
per-image shards). ``tools/train_net.py`` takes the lock before it starts any process, and
holds it until the last one has ended; a second run into the same folder is refused in one line
naming the holder.

The lock is an advisory ``flock`` on ``OUTPUT_DIR/.clearclip_d2.lock``: the kernel releases it
when the holding process ends, however it ends (``kill -9`` included), so a lock left by a dead
process is never in the way -- the next run takes it over and says so. The file also records the
holder (pid, host, start time, command) for the refusal message; it is a lock, not data, so it is
written in place. A run that ends normally removes the file (while holding the lock; a run that
opened it just before checks, once locked, that it is still the file at that path). Taking the
lock is also the check that ``OUTPUT_DIR`` can be created and written
(:func:`~.io.check_writable_folder`).
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Any, Dict, Iterator, Optional

from .errors import ClearCLIPError
from .io import check_writable_folder

logger = logging.getLogger(__name__)

LOCK_FILE = ".clearclip_d2.lock"


def _holder_record() -> Dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:300]}


def _read_holder(fd: int) -> Optional[Dict[str, Any]]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def _describe(holder: Optional[Dict[str, Any]]) -> str:
    if not holder:
        return "another run"
    return f"another run (pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')})"


def pid_is_running(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


@contextlib.contextmanager
def output_folder_lock(folder: str, key: str = "OUTPUT_DIR") -> Iterator[None]:
    """Hold the lock of ``folder`` (created if needed) for the ``with`` block.

    Raises :class:`ClearCLIPError` in one line when another living run holds it, or when the
    folder cannot be created or written (``key`` names it in the message).
    """
    check_writable_folder(folder, key)
    path = os.path.join(folder, LOCK_FILE)
    fd = _open_locked(path, folder, key)
    try:
        _record_holder(fd, folder, key)
        yield
        with contextlib.suppress(OSError):
            os.remove(path)  # a clean end; a file left behind means its holder died
    finally:
        os.close(fd)  # releases the flock


def _open_locked(path: str, folder: str, key: str) -> int:
    """Open and lock the lock file at ``path``: the descriptor, locked by this process."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ClearCLIPError(f"cannot create the lock file {path} of {key} {folder}: {e.strerror}") from e
        try:
            _acquire(fd, folder, key)
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)  # the holder removed this file as it ended: lock the new one


def _acquire(fd: int, folder: str, key: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ClearCLIPError(f"cannot lock {key} {folder}: {e.strerror} (a file system without locks?)") from e
        raise ClearCLIPError(
            f"{key} {folder} is in use by {_describe(_read_holder(fd))}: two runs in one folder would mix their "
            f"results; use another {key}, or wait for that run to end"
        ) from e


def _record_holder(fd: int, folder: str, key: str) -> None:
    earlier = _read_holder(fd)
    if earlier and earlier.get("host") == socket.gethostname() and not pid_is_running(int(earlier.get("pid", -1))):
        logger.warning(f"{key} {folder}: taking over the lock of a run that ended without releasing it (pid {earlier.get('pid')})")
    record = json.dumps(_holder_record()).encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
    except OSError as e:
        raise ClearCLIPError(f"cannot write to {key} {folder}: {e.strerror}; free some space or choose another {key}") from e
