"""Atomic writes: every artefact (checkpoints, cards, configs, health, metrics, datasets, models, params)
appears whole or not at all. Write to a temporary name in the same folder, fsync, then os.replace. And the lock
files that keep two processes from writing one table or one jobs folder at once."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from leakhunter.errors import InputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error the file written there is
    fsynced and renamed over `path` (and the folder fsynced). On an error the temporary file is removed and
    `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_beside(path)
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        replace_into(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def temporary_beside(path: Path) -> Path:
    """A fresh, empty file in `path`'s folder (mkstemp: its owner's alone while it is written), to be moved over
    `path` by replace_into."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o600)  # writable by its owner when reopened by name, whatever the umask takes away
    except OSError:
        pass
    finally:
        os.close(handle)
    return Path(name)


def replace_into(temporary: Path, path: Path) -> None:
    """Rename a finished temporary file over `path`, first giving it the mode the file should have: mkstemp's 0600
    would survive the rename and make every dataset, model and table its owner's alone whatever the umask. A
    rewrite keeps the file's mode; a new file gets 0666 less the umask, as open() gives. A file system that
    refuses chmod keeps mkstemp's mode."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        os.chmod(temporary, mode)
    except OSError:
        pass
    os.replace(temporary, path)


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask sets it to read it, which
    another thread creating a file meanwhile would feel)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Write text (UTF-8; a file name that is not UTF-8 as its own bytes) or bytes to `path` atomically."""
    with atomic_path(path) as temporary:
        if isinstance(content, str):
            temporary.write_text(content, encoding="utf-8", errors="surrogateescape")
        else:
            temporary.write_bytes(content)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class LockFile:
    """An advisory lock (flock) on a file beside what it guards, held until release(): the kernel drops it when
    the process dies, so a crash leaves no stale lock, only the empty file (taken over by the next holder).
    Released by unlinking first; a holder that opened the old file before the unlink sees its inode gone and
    opens the new one, so two processes never both hold it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, busy: str) -> LockFile:
        """Take the lock now or raise InputError(busy): waiting would hang a night's run behind another."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise InputError(busy) from None
            except OSError as error:  # a share without locks (some SMB and FUSE mounts): unguarded, as before
                os.close(fd)
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                    raise
                logging.getLogger("leakhunter").warning("%s: this filesystem has no locks (%s); nothing keeps "
                                                        "a second run out", self.path, error.strerror)
                return self
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self._fd = fd
                return self
            os.close(fd)  # released (unlinked) between our open and our flock: take the new file

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LockFile:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def not_a_model_file(path: Path, wanted: tuple[str, ...] = ("best.onnx", "best.pth")) -> str:
    """Why a model path (`leak info`, `export`, `bench`) names no file: a folder (a run's, whose model file of
    the `wanted` names is named), or nothing there."""
    if Path(path).is_dir():
        held = [name for name in wanted if (Path(path) / name).is_file()]
        return f"{path}: a folder, not a model file" + (f"; give {Path(path) / held[0]}" if held else "")
    return f"{path}: no such file"
