"""Writing files so that nothing is lost: one atomic write for files, one for directories, and
output directories that a failed command does not leave behind.

Every writer of fourbit goes through `atomic_write` (a file) or `atomic_dir` (a run directory or
a checkpoint): the content is written under a unique temporary name in the target's directory,
flushed to disk (``fsync``), then renamed over the target (``os.replace``, atomic on POSIX), and
the directory entry is flushed too. A reader therefore sees the old file or the new one, never a
part; two writers racing on one target leave one of their files, complete; a write that fails
leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fourbit.traces.errors import ConfigError

__all__ = ["atomic_dir", "atomic_write", "created_dir", "fsync_dir", "fsync_tree", "previous_dir", "replace_dir"]


_UMASK = os.umask(0o022)
os.umask(_UMASK)
"""The process's umask (read once at import: `os.umask` can only be read by setting it), applied
to the files and directories written through temporary names, as a plain ``open`` would."""


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk. A no-op where the
    platform cannot open directories (the rename is still atomic there)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename stays atomic
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Context manager for writing the file ``path`` atomically.

    Yields a temporary path in the same directory (a unique name, ``.NAME.*.tmp``); the caller
    writes the whole file there (``df.to_parquet(tmp)``, ``fig.savefig(tmp)``, ...). On a normal
    exit the file is flushed, renamed over ``path`` and the directory flushed; on an exception
    the temporary file is removed and the exception propagates, ``path`` untouched.

    Raises
    ------
    OSError
        The directory of ``path`` does not exist or is not writable.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result gets a new file's usual mode
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, marker: str, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Context manager for writing the directory ``path`` atomically.

    Yields a new empty temporary directory next to ``path`` (``.NAME.tmp-*``) for the caller to
    fill. On a normal exit every file in it is flushed and it replaces ``path`` (`replace_dir`,
    with ``marker`` and ``keep``); on an exception it is removed and ``path`` is untouched.

    Raises
    ------
    ConfigError
        ``path`` exists and is not a directory of this kind (see `replace_dir`).
    OSError
        The parent of ``path`` cannot be created or written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; the result gets a new directory's usual mode
    try:
        yield tmp
        fsync_tree(tmp)
        replace_dir(tmp, path, marker=marker, keep=keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(tmp: Path, path: Path, *, marker: str, keep: tuple[str, ...] = ()) -> None:
    """Move the finished directory ``tmp`` to ``path``, replacing an older one there.

    The older directory must hold ``marker`` (it is of the same kind) or nothing but the entries
    named in ``keep``: nothing else is ever replaced. The ``keep`` entries of the older directory
    (a training checkpoint) move into the new one unless it has its own. Replacing takes two
    renames (old aside, new in): a crash between them leaves no directory at ``path`` and the old
    one at ``.NAME.old-*/previous`` (`previous_dir` finds it).

    Raises
    ------
    ConfigError
        ``path`` exists and holds neither ``marker`` nor only ``keep`` entries.
    """
    if path.exists():
        entries = {p.name for p in path.iterdir()} if path.is_dir() else {None}
        if marker not in entries and not entries <= set(keep):
            raise ConfigError(f"{path} exists and is not a directory fourbit wrote (no {marker}); "
                              "refusing to replace it")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "previous")
        os.replace(tmp, path)
        for name in keep:
            if (old / "previous" / name).exists() and not (path / name).exists():
                os.replace(old / "previous" / name, path / name)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


def previous_dir(path: Path) -> Path | None:
    """The older directory that an interrupted `replace_dir` left aside for ``path``, if any."""
    left = sorted(path.parent.glob(f".{path.name}.old-*/previous"))
    return left[-1] if left else None


def fsync_tree(path: Path) -> None:
    """Flush every file below ``path`` and the directories holding them."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            _fsync_file(Path(root) / name)
        fsync_dir(root)


@contextlib.contextmanager
def created_dir(path: str | os.PathLike, *, ignore: tuple[str, ...] = ()) -> Iterator[Path]:
    """Create the output directory ``path`` (and its parents) for a command and check that a file
    can be written there; yields it.

    When the command fails (any exception) and this call created the directory, it is removed
    again unless a file (other than those named in ``ignore``) was written in it: a failed
    command leaves no new directory behind, and nothing it wrote (a checkpoint, finished points)
    is lost.

    Raises
    ------
    ConfigError
        ``path`` cannot be created or written (names the directory and the reason).
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        _remove_empty(missing, ignore)
        raise ConfigError(f"--out {str(path)!r} is not a writable directory: {exc.strerror or exc}") from exc
    try:
        yield path
    except BaseException:
        _remove_empty(missing, ignore)
        raise


def _remove_empty(dirs: list[Path], ignore: tuple[str, ...]) -> None:
    """Remove the directories of ``dirs`` (deepest first) that hold no file but ``ignore``d ones."""
    for d in dirs:
        if d.is_dir() and not any(p.is_file() and p.name not in ignore for p in d.rglob("*")):
            shutil.rmtree(d, ignore_errors=True)
