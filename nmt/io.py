"""Atomic file writes and small JSON/JSONL helpers.

Everything `nmt` writes goes to a temporary file in the destination folder and is moved into place
with `os.replace`, so an interrupted run always leaves the previous good file (or none), never a
half written one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast


def _umask_mode(base: int) -> int:
    """`base` (0o666 for files, 0o777 for folders) less the process umask, as `open` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry so that a rename inside it survives a power cut (POSIX only)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """`path` opened for reading bytes, gunzipped on the fly when its name ends in .gz: the one
    way `nmt` opens the text files it reads (corpora, files to translate, references)."""
    path = Path(path)
    handle = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    return cast(IO[bytes], handle)


def decode_utf8(data: bytes, path: str | os.PathLike, error: type[Exception]) -> str:
    """`data` as text; `error("PATH:LINE: not UTF-8 text (byte B of the line: why)")` when it is
    not, so that the user finds the bad byte without a hex editor."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        why = f"byte {column} of the line: {exc.reason}"
        raise error(f"{path}:{line}: not UTF-8 text ({why})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def process_start() -> float:
    """When this process started (Unix time, a second early to be safe): from /proc on Linux,
    else the time of the first call. Read once, when first needed, not at import."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of proc(5): start time in clock ticks after boot
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK") - 1.0
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def is_stream(path: str | os.PathLike) -> bool:
    """Whether `path` is something other than a regular file or folder (a pipe, FIFO, device or
    socket, through links: /dev/stdin, `<(cmd)`): read once, written in place, never replaced."""
    info = _stat(Path(path))
    return info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode))


# The folder of a process's open files: /proc/PID/fd (/dev/fd and /dev/std* lead there).
_FD_FOLDER = re.compile(r"/proc/(self|thread-self|\d+)(?:/task/\d+)?/fd")
_MAX_LINKS = 40  # as the kernel's own limit on links followed in one path


def _fd_entry(path: Path) -> tuple[int, int] | None:
    """(pid, descriptor) when `path`, followed link by link, reaches an entry of a /proc/PID/fd
    folder (/dev/stdout, /dev/fd/3, /proc/self/fd/1, or a symlink to one): an open file of a
    process, not a name in a folder that a temp file could be renamed over."""
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        parent, name = os.path.split(current)
        parent = os.path.realpath(parent)
        match = _FD_FOLDER.fullmatch(parent)
        if match:
            pid = match.group(1)
            return (int(pid) if pid.isdigit() else os.getpid()), int(name) if name.isdigit() else -1
        current = os.path.join(parent, name)
        if not os.path.islink(current):
            return None
        current = os.path.join(parent, os.readlink(current))  # an absolute target replaces it
    return None


def _own_descriptor(path: Path) -> int | None:
    """The descriptor of this process that `path` names: through /proc/self/fd (/dev/stdout, a
    link to /proc/self/fd/1), or the very file our stdout or stderr is redirected to."""
    entry = _fd_entry(path)
    if entry is not None:
        return entry[1] if entry[0] == os.getpid() and entry[1] >= 0 else None
    own = _identity(path)
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            info = os.fstat(fd)
            if own is not None and own == (info.st_dev, info.st_ino):
                return fd
    return None


def is_written_through(path: str | os.PathLike) -> bool:
    """Whether an output `path` is a stream that is written in place, never replaced: a device,
    FIFO or socket, an open file of a process (/dev/stdout, /proc/self/fd/1, links to them), or
    the file our own stdout or stderr goes to. Renaming a temp file over such a path would put a
    regular file in place of /dev/stdout or of the link, and the redirected file stay empty."""
    path = Path(path)
    return is_stream(path) or _fd_entry(path) is not None or _own_descriptor(path) is not None


@contextlib.contextmanager
def _open_through(path: Path, mode: str, encoding: str | None) -> Iterator[IO]:
    """`path` opened for writing in place: our own descriptor duplicated (so that a redirected
    stdout keeps its position and is not truncated), anything else opened by name."""
    fd = _own_descriptor(path)
    if fd in (1, 2):
        with contextlib.suppress(Exception):  # what this process printed goes first
            (sys.stdout if fd == 1 else sys.stderr).flush()
    with (
        os.fdopen(os.dup(fd), mode, encoding=encoding)
        if fd is not None
        else open(path, mode, encoding=encoding)
    ) as handle:
        yield handle


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`.

    On an exception the temp file is removed and `path` is left untouched. An OSError without a
    file name (a full disk) is given `path` as its file name. A stream (`is_written_through`:
    /dev/stdout, a link to /proc/self/fd/1, a FIFO) is written in place. The temp file is
    locked while open, so that `remove_stale_temps` of another process leaves it alone.
    """
    path = Path(path)
    binary = "b" in mode
    try:
        if is_written_through(path):
            with _open_through(path, mode, None if binary else encoding) as handle:
                yield handle
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:
            exc.filename = str(path)
        raise


def not_a_file(path: str | os.PathLike, missing: str = "file not found") -> str | None:
    """Why `path` cannot be read as a regular file (`missing` when there is nothing there, a
    folder, a pipe or device: commands that read their input whole before using it take files
    only), or None."""
    return _not_a(Path(path), False, missing)


def not_a_folder(path: str | os.PathLike, missing: str = "no such folder") -> str | None:
    """Why `path` is not a folder (`missing` when there is nothing there), or None."""
    return _not_a(Path(path), True, missing)


def _not_a(path: Path, folder: bool, missing: str) -> str | None:
    info = _stat(path)
    if info is None:
        return missing
    if (stat.S_ISDIR if folder else stat.S_ISREG)(info.st_mode):
        return None
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a file"
    if stat.S_ISREG(info.st_mode):
        return "is a file, not a folder"
    if folder:
        return "not a folder (a pipe or device)"
    return "not a regular file (a pipe or device); save it to a file first"


def check_file(
    path: str | os.PathLike, refused: type[Exception], missing: str = "file not found"
) -> None:
    """Raise `refused("PATH: why")` (an NmtError kind) when `not_a_file` finds a reason."""
    problem = not_a_file(path, missing)
    if problem:
        raise refused(f"{path}: {problem}")


def check_output_file(path: str | os.PathLike) -> None:
    """Raise the OSError that writing the file `path` would meet, before any work is spent on it:
    `path` is a folder, the nearest existing folder above it is a file, or it is not writable.
    (A full disk shows only on the write itself; `atomic_open` names the file then.)"""
    path = Path(path)
    if is_written_through(path):  # written in place: no folder is needed, but a descriptor
        fd = _own_descriptor(path)
        if fd is not None:
            try:
                writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
            except OSError as exc:  # not open in this process
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            if not writable:
                raise PermissionError(errno.EBADF, "open for reading only", str(path))
        return
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    for parent in path.parents:  # nearest first
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
        if not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(parent))
        return


def _temp_pattern(name: str) -> re.Pattern[str]:
    # The names tempfile.mkstemp / mkdtemp give with prefix ".NAME." and suffix ".tmp".
    return re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files and folders that an earlier, killed write of `path` left beside it.

    Conservative: only names exactly as `atomic_open` / `atomic_dir` give them for this very
    `path`, last changed before this process started, not locked by a live writer, and never an
    input of this process's command (nor a folder holding one; see `output_conflict`): a user's
    file may be named like a temp file. Symlinks are never followed. Returns what was removed.
    """
    path = Path(path)
    return _remove_stale(path.parent, _temp_pattern(re.escape(path.name)))


def remove_stale_temps_in(folder: str | os.PathLike, names: str) -> list[Path]:
    """`remove_stale_temps` for every output in `folder` whose name matches the regular
    expression `names` (e.g. the checkpoints of a run, which a resumed run may not write again)."""
    return _remove_stale(Path(folder), _temp_pattern(names))


def _remove_stale(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            # A temp file last changed before this process started cannot be one of its own.
            if (
                stat.S_ISLNK(info.st_mode)
                or info.st_mtime >= process_start()
                or _is_read(entry, info)
            ):
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live writer: skip
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
            finally:
                os.close(fd)
    return removed


# What this process's command reads, as `output_conflict` saw its inputs: (device, inode) and the
# real paths. `remove_stale_temps` leaves these alone, whatever their names.
_READ_IDS: set[tuple[int, int]] = set()
_READ_PATHS: set[Path] = set()


def _remember_inputs(inputs: Iterable[Input]) -> None:
    for source in inputs:
        identity = _identity(source.path)
        if identity is not None:
            _READ_IDS.add(identity)
        _READ_PATHS.add(_real(source.path))


def _is_read(entry: os.DirEntry[str], info: os.stat_result) -> bool:
    """Whether the directory entry `entry` is, or (a folder) holds, an input of this process."""
    if (info.st_dev, info.st_ino) in _READ_IDS:
        return True
    real = _real(Path(entry.path))
    return any(_is_within(path, real) for path in _READ_PATHS)


@contextlib.contextmanager
def hold_lock(folder: Path) -> Iterator[None]:
    """Lock the temp folder `folder` while it is being built (see `remove_stale_temps`)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")


class JSONLimitError(json.JSONDecodeError):
    """JSON that is well formed but beyond what Python reads: nested deeper than its recursion
    limit allows (about 1,000 levels) or a number of more digits than it converts (4,300)."""

    def __init__(self, msg: str, doc: str) -> None:
        super().__init__(msg, doc, 0)
        self.args = (msg,)  # no position: the whole text is at fault


def parse_json(text: str) -> Any:
    """`json.loads(text)` for text from outside (files, requests). Every way it can fail is a
    json.JSONDecodeError (a ValueError): the two that `json.loads` raises otherwise, a
    RecursionError for deep nesting and a ValueError for a huge integer, become a
    `JSONLimitError` whose `msg` says which."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise JSONLimitError("nested too deeply", text) from None
    except ValueError:  # int() refuses to convert so many digits
        limit = sys.get_int_max_str_digits()
        raise JSONLimitError(f"a number of more than {limit:,} digits", text) from None


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return parse_json(handle.read())


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike, row: Any) -> None:
    """Append one record; a line is written with a single call so a crash never splits it."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The records of a JSONL file. A last line without its newline that is not valid JSON is
    dropped: it is a record torn by a kill in the middle of `append_jsonl`. Any other bad line
    raises ValueError naming its line."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(parse_json(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: torn
                break
            raise ValueError(f"line {number}: {exc.msg}") from None
    return rows


# Written into every folder `atomic_dir` builds: which command made it and what it holds. It is the
# proof that lets a later run of that command replace the folder; without it nothing is replaced.
OUTPUT_MARKER = ".nmt-output.json"


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


# ---- outputs never replace inputs ---------------------------------------------------------------
# The one rule every writing command checks before any work: no output may be, or resolve to
# (through symlinks or a hard link), a file the command reads or may read later (the files of a
# run or prepared folder it uses), nor another output of the same call. Devices and pipes
# (/dev/stdout, a FIFO) are streams, not files: writing to one replaces nothing.


@dataclass(frozen=True)
class Output:
    """Something a command writes, as the user named it (`flag`, e.g. "-o").

    kind "file": the file `path`; "folder": the folder `path`, replaced whole (prepare, export);
    "files": files named like the glob `pattern` written into the folder `path` (--plot-dir)."""

    flag: str
    path: Path
    kind: str = "file"
    pattern: str = "*"


@dataclass(frozen=True)
class Input:
    """Something a command reads (or may read later), described for the message (`what`, e.g.
    "-i" or "a file of the run RUN"); `tree`: a folder read whole (a prepared data folder), with
    whatever its links lead to; `pattern`: every file in the folder `path` whose name matches
    this glob, present or not yet (the checkpoint_*.pt files of a run)."""

    path: Path
    what: str
    tree: bool = False
    pattern: str | None = None


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _real(path: Path) -> Path:
    """`path` with every symlink resolved, also a last one that points nowhere yet."""
    return Path(os.path.realpath(path))


def _identity(path: Path) -> tuple[int, int] | None:
    info = _stat(path)
    return None if info is None else (info.st_dev, info.st_ino)


def _same_file(a: Path, b: Path) -> bool:
    """The same file: one inode (a hard or symbolic link) or, for a path that does not exist
    yet, the same place once links are resolved."""
    if is_stream(a) or is_stream(b):
        return False
    ids = _identity(a), _identity(b)
    if ids[0] is not None and ids[1] is not None:
        return ids[0] == ids[1]
    return _real(a) == _real(b)


def _file_ids(folder: Path, pattern: str = "*", recursive: bool = True) -> set[tuple[int, int]]:
    """The inodes of the regular files under `folder` whose names match `pattern`."""
    found: set[tuple[int, int]] = set()
    if not folder.is_dir():
        return found
    for root, _, names in os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]:
        for name in fnmatch.filter(names, pattern):
            info = _stat(Path(root) / name)
            if info is not None and stat.S_ISREG(info.st_mode):
                found.add((info.st_dev, info.st_ino))
    return found


def _conflict_with_input(out: Output, source: Input) -> str | None:
    if source.pattern is not None:
        return _conflict_with_names(out, source, source.pattern)
    problem = _conflict_with_path(out, source)
    if problem is None and source.tree:
        problem = _conflict_with_tree(out, source)
    return problem


def _conflict_with_path(out: Output, source: Input) -> str | None:
    where = f"{out.flag} {out.path}".lstrip()
    if source.tree and _is_within(_real(out.path), _real(source.path)):
        verb = "is" if _real(out.path) == _real(source.path) else "lies inside"
        return f"{where}: {verb} {source.path} ({source.what}); write the output elsewhere"
    if out.kind == "file":
        if not source.tree and _same_file(out.path, source.path):
            if os.path.abspath(out.path) == os.path.abspath(source.path):
                return f"{where}: is also {source.what}; write the output to another file"
            return (
                f"{where}: is {source.path} ({source.what}) through a link; write the output "
                "to another file"
            )
        if source.tree and _identity(out.path) in _file_ids(source.path):
            return (
                f"{where}: is a hard link of a file in {source.path} ({source.what}); write the "
                "output to another file"
            )
        return None
    folder = _real(out.path)
    inside = _real(source.path)
    if out.kind == "folder":
        if inside == folder:
            return f"{where}: is {source.path} ({source.what}); write the output elsewhere"
        held = _is_within(inside, folder) or _identity(source.path) in _file_ids(out.path)
        if held:
            return f"{where}: holds {source.path} ({source.what}); write the output elsewhere"
        return None
    matches = inside.parent == folder and fnmatch.fnmatch(inside.name, out.pattern)
    if matches or _identity(source.path) in _file_ids(out.path, out.pattern, recursive=False):
        return (
            f"{where}: its {out.pattern} files would replace {source.path} ({source.what}); "
            "write them to another folder"
        )
    return None


def _conflict_with_names(out: Output, source: Input, pattern: str) -> str | None:
    """An output file named like the files `pattern` of the folder `source.path` stands for."""
    if out.kind != "file":
        return None  # a folder output is checked against the run's own files
    real = _real(out.path)
    named = real.parent == _real(source.path) and fnmatch.fnmatch(real.name, pattern)
    if named or _identity(out.path) in _file_ids(source.path, pattern, recursive=False):
        return (
            f"{out.flag} {out.path}: {source.path / pattern} are {source.what}, present or not "
            "yet; write the output to another file"
        ).lstrip()
    return None


def _conflict_with_tree(out: Output, source: Input) -> str | None:
    """An output that a link inside the folder `source.path` leads to (or into), or one that
    holds a hard link of a file in it: writing it would change what the folder holds."""
    where = f"{out.flag} {out.path}".lstrip()
    target = _real(out.path)
    for link, leads_to in _tree_links(source.path):
        if out.kind == "file":
            hit = _is_within(target, leads_to)
        elif out.kind == "folder":
            hit = _is_within(leads_to, target) or _is_within(target, leads_to)
        else:
            named = leads_to.parent == target and fnmatch.fnmatch(leads_to.name, out.pattern)
            hit = named or _is_within(target, leads_to)
        if hit:
            return (
                f"{where}: {link} ({source.what}) is a link that leads there; write the output "
                "elsewhere"
            )
    if out.kind != "file" and _file_ids(source.path) & _file_ids(
        out.path, out.pattern, recursive=out.kind == "folder"
    ):
        return (
            f"{where}: holds a hard link of a file in {source.path} ({source.what}); write the "
            "output elsewhere"
        )
    return None


def _tree_links(folder: Path) -> Iterator[tuple[Path, Path]]:
    """(link, where it leads) for every symlink under `folder` (not followed further)."""
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            if path.is_symlink():
                yield path, _real(path)


def _conflict_between(out: Output, other: Output) -> str | None:
    where = f"{out.flag} {out.path}".lstrip()
    if out.kind == "file" and other.kind == "file" and _same_file(out.path, other.path):
        return f"{where}: is also {other.flag}; give each output a file of its own"
    if out.kind == "file" and other.kind == "files":
        real = _real(out.path)
        if real.parent == _real(other.path) and fnmatch.fnmatch(real.name, other.pattern):
            return f"{where}: {other.flag} {other.path} writes its {other.pattern} files there"
    return None


def output_conflict(outputs: Iterable[Output], inputs: Iterable[Input]) -> str | None:
    """The first reason why one of `outputs` may not be written, or None: it is (or, for a
    folder, holds; for a file, lies inside a `tree` of) one of `inputs`, or it is another output
    of the same call. Paths are compared after resolving symlinks, and existing files by inode,
    so neither a link nor a hard link hides an input. The caller raises its NmtError kind.
    The inputs are remembered: no stale-temp cleanup of this process removes one."""
    outputs, inputs = list(outputs), list(inputs)
    _remember_inputs(inputs)
    for n, out in enumerate(outputs):
        for source in inputs:
            problem = _conflict_with_input(out, source)
            if problem:
                return problem
        for other in outputs[:n]:
            problem = _conflict_between(out, other) or _conflict_between(other, out)
            if problem:
                return problem
    return None


def check_outputs(
    outputs: Iterable[Output], inputs: Iterable[Input], refused: type[Exception]
) -> None:
    """Raise `refused(message)` (an NmtError kind) when `output_conflict` finds a reason."""
    problem = output_conflict(outputs, inputs)
    if problem:
        raise refused(problem)


def output_problem(
    path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()
) -> str | None:
    """Why the folder `path` may not be written (or replaced) by `nmt KIND`, or None when it may.

    It may when it is absent, an empty folder, or a folder that an earlier `nmt KIND` wrote: its
    `OUTPUT_MARKER` names `kind` and it holds no top-level entry besides the ones listed there.
    Never when it is, or contains, one of `inputs` (`output_conflict`).
    """
    path = Path(path)
    sources = [Input(Path(source), "the input") for source in inputs]
    problem = output_conflict([Output("", path, "folder")], sources)
    if problem:
        return problem
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_dir():
        return f"{path}: exists and is not a folder; choose another --out"
    entries = {entry.name for entry in path.iterdir()}
    if not entries:
        return None
    try:
        marker = read_json(path / OUTPUT_MARKER)
    except (OSError, ValueError):
        marker = None
    if not isinstance(marker, dict) or marker.get("kind") != kind:
        return (
            f"{path}: exists and holds no {OUTPUT_MARKER} naming it an `nmt {kind}` output, so "
            "it is not replaced; choose another --out"
        )
    foreign = sorted(entries - set(marker.get("entries", [])) - {OUTPUT_MARKER})
    if foreign:
        return (
            f"{path}: holds {foreign[0]}, which `nmt {kind}` did not write, so it is not "
            "replaced; move that out or choose another --out"
        )
    return None


def write_output_marker(folder: Path, kind: str) -> None:
    entries = sorted(entry.name for entry in folder.iterdir() if entry.name != OUTPUT_MARKER)
    write_json(folder / OUTPUT_MARKER, {"kind": kind, "entries": entries})


def add_output_entry(folder: Path, name: str) -> None:
    """Record `name` in the `OUTPUT_MARKER` of `folder` as part of that output (an entry added
    after the command finished, such as a cache), so that replacing the folder may remove it.
    A folder without a marker is left as it is."""
    try:
        marker = read_json(folder / OUTPUT_MARKER)
    except (OSError, ValueError):
        return
    entries = marker.get("entries") if isinstance(marker, dict) else None
    if isinstance(entries, list) and name not in entries:
        write_json(folder / OUTPUT_MARKER, {**marker, "entries": sorted([*entries, name])})


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike,
    kind: str,
    inputs: Iterable[str | os.PathLike] = (),
    refused: type[Exception] = FileExistsError,
) -> Iterator[Path]:
    """Build the output folder of `nmt KIND` under a temp name beside `path`; on success mark it
    (`OUTPUT_MARKER`) and rename it into place.

    An existing `path` is replaced only when `output_problem` allows it, checked on entry and again
    right before the rename; otherwise `refused(message)` is raised (callers pass an NmtError
    kind) and nothing is touched. The old folder is moved aside under a fresh temp name and removed
    only after the new one is in place, so a crash or Ctrl-C leaves either the old folder or the
    new one, never a half-written one that a later run would trust.
    """
    path = Path(path)
    inputs = list(inputs)
    problem = output_problem(path, kind, inputs)
    if problem:
        raise refused(problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes 0700; give the usual permissions
    try:
        with hold_lock(tmp):
            yield tmp
        write_output_marker(tmp, kind)
        problem = output_problem(path, kind, inputs)  # something may have appeared meanwhile
        if problem:
            raise refused(problem)
        if path.exists():
            # An empty folder of our own making: renaming `path` over it is atomic, and no name
            # that someone else could own is ever deleted.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
