"""The installed package: one import name, a lazy public API, no shadowing, one thread setting."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fourbit

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("traces", "models", "hwsim", "analysis")


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter outside the repository (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_import_fourbit_loads_no_numpy_and_sets_the_thread_policy(tmp_path):
    res = _python("import sys, os, fourbit\n"
                  "heavy = sorted(m for m in ('numpy', 'numba', 'pandas', 'pyarrow', 'simpy', 'pydantic') "
                  "if m in sys.modules)\n"
                  "print(heavy, os.environ['OMP_WAIT_POLICY'], fourbit.__file__)", tmp_path)
    assert res.returncode == 0, res.stderr
    heavy, policy, where = res.stdout.split()[0], res.stdout.split()[1], res.stdout.split()[2]
    assert (heavy, policy) == ("[]", "PASSIVE")
    assert not where.startswith(str(tmp_path))


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_the_folders_are_not_top_level_packages(tmp_path, name):
    res = _python(f"import {name}", tmp_path)
    assert res.returncode != 0 and f"No module named '{name}'" in res.stderr
    assert _python(f"import fourbit.{name}", tmp_path).returncode == 0


def test_only_fourbit_lands_at_the_top_level_of_site_packages(tmp_path):
    """The installed distribution's files (read outside the repository, whose build metadata
    would otherwise be found first): fourbit/ and its metadata, or an editable install's .pth
    and finder."""
    res = _python("from importlib import metadata\n"
                  "d = metadata.distribution('fourbit')\n"
                  "print(d.read_text('top_level.txt').split())\n"
                  "print(sorted({str(f).split('/')[0] for f in d.files if not str(f).startswith('..')}))", tmp_path)
    assert res.returncode == 0, res.stderr
    top_level, entries = (eval_list(line) for line in res.stdout.splitlines())
    assert top_level == ["fourbit"]
    extra = [e for e in entries if not (e == "fourbit" or e.startswith(("fourbit-", "__editable__", "__pycache__")))]
    assert extra == []


def eval_list(line: str) -> list[str]:
    """A printed list of plain strings (no eval)."""
    return re.findall(r"'([^']*)'", line)


def test_every_public_name_resolves_lazily():
    for name in fourbit.__all__:
        assert getattr(fourbit, name) is not None, name
    assert set(fourbit.__all__) <= set(dir(fourbit))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fourbit.nope  # noqa: B018


def _modules():
    for sub in SUBPACKAGES:
        pkg = importlib.import_module(f"fourbit.{sub}")
        yield pkg
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"fourbit.{sub}."):
            yield importlib.import_module(info.name)


def test_no_name_shadows_a_module():
    """A package attribute named like one of its submodules is that submodule (``fourbit.models.
    trainer`` is the module; ``fourbit.train`` the function)."""
    for module in _modules():
        if not hasattr(module, "__path__"):
            continue
        for info in pkgutil.iter_modules(module.__path__):
            if hasattr(module, info.name):
                assert getattr(module, info.name).__name__ == f"{module.__name__}.{info.name}", info.name
    subs = {info.name for info in pkgutil.iter_modules(fourbit.__path__)} | set(SUBPACKAGES)
    assert not subs & set(fourbit.__all__)


def test_the_source_uses_the_package_name_and_sets_threads_once():
    sources = [p for d in (*SUBPACKAGES, "src", "tests") for p in (ROOT / d).rglob("*.py")]
    top_level = re.compile(rf"^\s*(from|import) ({'|'.join(SUBPACKAGES)})\b", re.M)
    assert [str(p) for p in sources if top_level.search(p.read_text())] == []
    setting = [p.relative_to(ROOT) for p in sources if "OMP_WAIT_POLICY\", \"PASSIVE" in p.read_text()]
    assert setting == [Path("src/fourbit/__init__.py")]
