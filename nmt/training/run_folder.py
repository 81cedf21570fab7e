"""The run directory's life: one writer at a time, and nothing left behind by a failed start.

One writer: an exclusive `flock` on RUN_DIR/train.lock, held by rank 0 for the whole run. The
kernel drops a `flock` when its process ends, however it ends, so a lock left by a killed run never
blocks the next one; the file stays behind and holds the PID of the last holder, which is what a
refused second writer is told.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from nmt import checkpoint as ckpt
from nmt.errors import CheckpointError, ConfigError

LOCK_FILE = ckpt.LOCK_FILE


def _busy_message(run_dir: Path, pid: str) -> str:
    who = f"PID {pid}" if pid else "another process"
    return (
        f"{run_dir}: another `nmt train` ({who}) is writing this run; wait for it to end or stop "
        "it first (a second writer would overwrite its checkpoints)"
    )


def _no_locks_message(run_dir: Path, exc: OSError) -> str:
    return (
        f"{run_dir / LOCK_FILE}: cannot lock ({exc.strerror or exc}); put the run folder on a "
        "file system with file locks (a local disk, NFSv4, Lustre mounted with -o flock)"
    )


def _read_pid(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def check_unlocked(run_dir: Path) -> None:
    """CheckpointError when a live process holds the lock of `run_dir`; touches nothing else."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file: no writer
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CheckpointError(_busy_message(run_dir, _read_pid(path))) from None
    except OSError as exc:
        raise CheckpointError(_no_locks_message(run_dir, exc)) from None
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of one run directory (which must exist). `acquire` raises
    CheckpointError, naming the holder's PID, when another process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CheckpointError(_busy_message(self.run_dir, _read_pid(self.path))) from None
            except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without locks
                os.close(fd)
                raise CheckpointError(_no_locks_message(self.run_dir, exc)) from None
            # A holder that was releasing may have unlinked the file we opened: lock the file that
            # is at the path now, or two writers would each hold a lock on a different file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self.fd = fd

    def release(self, remove: bool = False) -> None:
        """Drop the lock; with `remove`, unlink the file first (a run folder being taken back)."""
        if self.fd is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)
        self.fd = None


# What a fresh run writes before its first checkpoint (besides the lock file and temp files).
SETUP_FILES = (
    ckpt.CONFIG_FILE,
    ckpt.DATA_FILE,
    ckpt.METRICS_FILE,
    ckpt.JOINT_SPM,
    ckpt.SRC_SPM,
    ckpt.TGT_SPM,
)
TENSORBOARD_DIR = "tensorboard"


class RunFolder:
    """Context manager around one training run's directory.

    `claim` (rank 0) locks it; a fresh run creates it and requires it to hold nothing else. On the
    way out the lock is released; when a fresh run ends with an exception before any checkpoint
    (*.pt) exists, what it wrote is removed, and the folders too when it made them, so that a retry
    (a fresh start or a new --out) is not blocked by a stub that cannot be resumed.
    """

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.resume = resume
        self.lock: RunLock | None = None
        self.created: list[Path] = []  # folders `claim` made, deepest first

    def __enter__(self) -> RunFolder:
        return self

    def claim(self, is_main: bool) -> None:
        if not is_main:
            return
        if not self.resume:
            self.created = [p for p in (self.path, *self.path.parents) if not p.exists()]
            self.path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(self.path)
        lock.acquire()
        others = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE)
        if not self.resume and others:
            lock.release()
            raise ConfigError(
                f"{self.path}: already exists and holds {others[0]}; choose another --out"
            )
        self.lock = lock

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.lock is None:
            return
        unsaved = not self.resume and not any(self.path.glob("*.pt"))
        if exc_type is None or not unsaved:
            self.lock.release()
            return
        for name in SETUP_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        shutil.rmtree(self.path / TENSORBOARD_DIR, ignore_errors=True)
        for temp in self.path.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                temp.unlink()
        self.lock.release(remove=True)
        for folder in self.created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: nothing of anyone else's goes
