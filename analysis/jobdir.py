"""The output directory of a job (main job, sweep, comparison, ablation): its overwrite and resume
policy, in one place, for the Python API and the command line alike.

A job writes ``fourbit-job.json`` (its kind and what defines it: the spec without where it runs
or writes) into its directory. Running a job again on the same directory continues it: its
caches (trained runs, imported traces, finished sweep points) are keyed by their content, so
what is done is reused and the tables come out the same. A directory that holds another job's
results, or anything else, is refused unless ``overwrite`` is given. Overwriting a fourbit job's
directory removes that job's result tables and figures (`RESULTS`) and keeps its caches, whose
entries are keyed by their content and so stay valid for any job; in a directory of foreign
files, overwriting writes beside them and deletes nothing. A job that fails before it has written
anything leaves no new directory behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from fourbit.traces.config import first_difference
from fourbit.traces.errors import ConfigError
from fourbit.traces.files import atomic_write, created_dir

__all__ = ["MANIFEST", "job_dir"]

MANIFEST = "fourbit-job.json"
RESULTS = ("results*.parquet", "results*.csv", "compare.csv", "ablation*.csv", "main_job.csv", "main_job.png",
           "sim_*.csv", "explain.csv", "explain.png", "explain.svg", "report.html", "figures")
"""The result tables and figures the jobs write at the top of their directory; the caches
(``runs/``, ``traces/``, ``points/``) are not among them."""


def _refuse(out: Path, identity: dict, kind: str) -> None:
    """ConfigError when ``out`` holds something other than this job's results."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file, not a directory")
    manifest = out / MANIFEST
    if not manifest.is_file():
        if any(out.iterdir()):
            raise ConfigError(f"--out {str(out)!r} is not empty and holds no fourbit job; choose another --out, or "
                              "pass --overwrite (overwrite=True) to write there anyway (nothing is deleted)")
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{manifest}: unreadable ({exc}); pass --overwrite (overwrite=True) to replace it") from exc
    advice = "pass --overwrite (overwrite=True) to replace them, or choose another --out"
    if not isinstance(old, dict) or old.get("kind") != kind:
        what = old.get("kind") if isinstance(old, dict) else None
        raise ConfigError(f"--out {str(out)!r} holds the results of a job of kind {what!r}, not {kind!r}; {advice}")
    if old.get("job") != identity:
        where, there, here = first_difference("", old.get("job"), identity)
        raise ConfigError(f"--out {str(out)!r} holds the results of another {kind} ({where} is {_brief(there)} "
                          f"there, {_brief(here)} here); {advice}")


def _brief(value, limit: int = 60) -> str:
    """A value for a one-line message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def job_dir(out: str | Path, kind: str, identity: dict, *, overwrite: bool = False) -> Iterator[Path]:
    """Context manager around a job writing into ``out``; yields the directory.

    ``kind`` names the job (``main_job``, ``sweep``, ``compare``, ``ablation``); ``identity`` is
    a JSON-able dict of what defines its results. Call it after every argument has been checked:
    it creates the directory (a ConfigError when that is impossible) and writes the manifest.

    Raises
    ------
    ConfigError
        ``out`` holds another job's results or foreign files (without ``overwrite``), is a file,
        or cannot be written.
    """
    if str(out) == "":
        raise ConfigError("--out '' names no directory; give the output directory")
    out = Path(out)
    identity = json.loads(json.dumps(identity, default=str))  # as the manifest will hold it
    if not overwrite:
        _refuse(out, identity, kind)
    elif (out / MANIFEST).is_file():  # another fourbit job's results make way; its caches stay
        for pattern in RESULTS:
            for p in out.glob(pattern):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    with created_dir(out, ignore=(MANIFEST,)) as path:
        with atomic_write(path / MANIFEST) as tmp:
            tmp.write_text(json.dumps({"kind": kind, "job": identity}, indent=2) + "\n", encoding="utf-8")
        yield path
