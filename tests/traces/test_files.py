"""Atomic writes: a reader sees the old file or the new one; racing writers leave one complete
file; a failed write leaves nothing; a failed command leaves no new directory."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from fourbit.traces.errors import ConfigError
from fourbit.traces.files import atomic_dir, atomic_write, created_dir

SIZE = 4 << 20  # 4 MiB: long enough that the two writers' writes overlap


def _writer(path: str, byte: int, rounds: int, start) -> None:
    start.wait()
    for _ in range(rounds):
        with atomic_write(path) as tmp:
            with open(tmp, "wb") as f:
                for _ in range(SIZE // (1 << 16)):
                    f.write(bytes([byte]) * (1 << 16))


def test_two_writers_racing_on_one_target_leave_one_complete_file(tmp_path):
    target = tmp_path / "table.bin"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(target), b, 5, start)) for b in (0xAA, 0x55)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = target.read_bytes()
    assert len(data) == SIZE and data in (b"\xaa" * SIZE, b"\x55" * SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["table.bin"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_atomic_dir_replaces_only_its_own_kind(tmp_path):
    run = tmp_path / "run"
    with atomic_dir(run, marker="meta.json") as tmp:
        (tmp / "meta.json").write_text("1")
    with atomic_dir(run, marker="meta.json") as tmp:
        (tmp / "meta.json").write_text("2")
    assert (run / "meta.json").read_text() == "2"
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory fourbit wrote"), \
            atomic_dir(other, marker="meta.json") as tmp:
        (tmp / "meta.json").write_text("3")
    assert (other / "cat.jpg").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["photos", "run"]


def test_created_dir_is_removed_on_failure_unless_something_was_written(tmp_path):
    with pytest.raises(KeyError), created_dir(tmp_path / "a" / "b"):
        raise KeyError("before any write")
    assert not (tmp_path / "a").exists()
    with pytest.raises(KeyError), created_dir(tmp_path / "c") as d:
        (d / "checkpoint").write_text("state")
        raise KeyError("after a write")
    assert (tmp_path / "c" / "checkpoint").is_file()
    with pytest.raises(KeyError), created_dir(tmp_path / "e", ignore=("manifest",)) as d:
        (d / "manifest").write_text("job")
        raise KeyError("only the manifest")
    assert not (tmp_path / "e").exists()


def test_created_dir_names_an_unwritable_place(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="is not a writable directory"), created_dir(blocker / "sub"):
        pass


def test_written_files_and_directories_get_the_usual_modes_not_the_temporaries(tmp_path):
    """mkstemp and mkdtemp make 0600 and 0700; what they become gets the modes a plain open and
    mkdir give under the process's umask."""
    with atomic_write(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
    with atomic_dir(tmp_path / "d", marker="m") as tmp:
        (tmp / "m").write_text("")
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
