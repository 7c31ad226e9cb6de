"""The README as written: its set-up command in a fresh environment, its Python example, its sweep
spec, and every Python name it shows."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

from tests.analysis.test_cli import check_main_job

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _setup_commands() -> list[str]:
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```\n(.*?)```", section, flags=re.S)]


def test_the_setup_section_has_the_two_commands_and_ci_runs_the_test_one():
    main, tests = _setup_commands()
    assert main == "python3 -m pip install . && fourbit run"
    assert tests == ("apt-get update && apt-get install -y chromium chromium-driver && "
                     "python3 -m pip install '.[test]' && python3 -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    for half in tests.split(" && "):
        assert re.search(rf"^{re.escape(half)}$", ci, flags=re.M), half


@pytest.mark.slow
def test_the_main_command_in_a_fresh_environment(tmp_path):
    """``python3 -m pip install . && fourbit run`` in a new virtual environment, in a copy of the
    repository's tracked files (the main job's end-to-end test: `check_main_job`); then the
    installed package's promises in that environment."""
    src = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
           "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir)}
    main = _setup_commands()[0]
    res = subprocess.run(["bash", "-c", main], cwd=src, env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    check_main_job(src / "fourbit-out", res.stdout)
    check = ("import sys, fourbit\n"
             "assert fourbit.__file__.startswith(sys.prefix), fourbit.__file__\n"
             "assert not {'numpy', 'numba', 'pandas'} & set(sys.modules)\n"
             "for name in ('models', 'analysis', 'traces', 'hwsim'):\n"
             "    try:\n"
             "        __import__(name)\n"
             "    except ModuleNotFoundError:\n"
             "        pass\n"
             "    else:\n"
             "        raise SystemExit(f'{name} is importable')\n")
    res = subprocess.run([str(env_dir / "bin" / "python"), "-c", check], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_the_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = _blocks("python")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # noqa: S102 (the README's own code)
    out = capsys.readouterr().out
    assert "total_cycles" in out and "speedup_vs_fp16" in out
    assert (tmp_path / "sweep-mlp" / "results.csv").is_file() and (tmp_path / "compare-mlp" / "compare.csv").is_file()


def test_the_block_numerics_example_runs_as_written():
    code = _blocks("python")[1]
    scope: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own code)
    assert scope["y"].shape == (64, 64) and scope["g"].format.name == "fp4_e2m1"
    np.testing.assert_allclose(scope["y"], scope["a"].real() @ scope["b"].real(), rtol=1e-5, atol=1e-5)


def test_the_sweep_spec_example_loads(tmp_path):
    (text,) = _blocks("toml")
    path = tmp_path / "specs" / "sweep-lenet5.toml"
    path.parent.mkdir()
    path.write_text(text)
    from fourbit.analysis.sweep import load_spec

    spec = load_spec(path)
    assert [ax.fields for ax in spec.grid] == [("array.rows", "array.cols"), ("recipe.radix",), ("array.dataflow",)]
    assert spec.source.train.epochs == 1 and spec.workers == 2
    # paths are relative to the spec file
    assert spec.out == str(path.parent / "sweep-lenet5")
    assert spec.source.data_dir == str(path.parent / "../shared/data/mnist")


def _resolve(dotted: str):
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i + 1]))
    return obj


def test_every_python_name_the_readme_shows_exists():
    names = set(re.findall(r"`(fourbit\.[A-Za-z_][A-Za-z0-9_.]*)", README))
    assert len(names) > 10
    for name in sorted(names):
        assert _resolve(name.rstrip(".")) is not None, name
    # no call through a bare subpackage name (they are not importable on their own)
    assert not re.search(r"`(?<![.\w])(analysis|hwsim|models|traces)\.\w+\(", README)


def test_the_quoted_strict_config_error_is_the_one_raised():
    import fourbit

    quoted = re.search(r"raises `ConfigError: (.*?)`", README.replace("\n", " ")).group(1)
    with pytest.raises(fourbit.ConfigError) as info:
        fourbit.load_chip("fourbit", {"array.rows": "64"})
    assert str(info.value) == quoted


def _command_lines() -> tuple[list[str], list[str]]:
    """Every ``fourbit VERB ...`` command the README shows: (whole lines of its code blocks, with
    continuation lines joined and without a trailing comment; commands quoted inline, which may
    name a flag alone, e.g. `fourbit simulate --input-grad`). Those with placeholders in capitals
    (RECIPE, RUN_DIR) are left out."""
    lines, fence = [], None
    for line in README.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            fence = line[3:] if fence is None else None  # opening (with its language) or closing
        elif fence == "":  # a plain block: shell commands
            lines.append(line.split("#")[0].split("&&")[-1].strip())
    inline = re.findall(r"`(fourbit [a-z-]+(?: [^`]*)?)`", README.replace("\n", " "))

    def keep(commands):
        return [c for c in dict.fromkeys(commands) if c.startswith("fourbit ") and not re.search(r"\b[A-Z][A-Z_]+\b", c)]

    return keep(lines), keep(inline)


def test_every_command_line_the_readme_shows_is_accepted_by_the_parser():
    """The README's command lines as a user copies them: each whole command line parses (its verb,
    flags and values), and each flag a quoted command names exists (the commands themselves take
    minutes: the README states their times)."""
    from fourbit.analysis.cli import _parser

    whole, inline = _command_lines()
    assert len(whole) >= 15 and "fourbit run" in whole and len(inline) >= 10
    for command in whole:
        argv = shlex.split(command)[1:]
        try:
            _parser(argv).parse_args(argv)
        except SystemExit as exc:  # argparse's way of refusing (it printed the reason)
            raise AssertionError(f"the README's `{command}` is refused by the parser") from exc
    for command in inline:
        argv = shlex.split(command)[1:]
        verb = _parser(argv)._subparsers._group_actions[0].choices[argv[0]]
        for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
            assert flag in verb._option_string_actions, f"the README's `{command}`: no option {flag}"


def test_every_image_the_readme_embeds_is_committed_and_made_by_its_script():
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", README)
    assert images == ["docs/figures/sweep-resnet18.png", "docs/figures/compare-resnet18.png"]
    script = (ROOT / "docs" / "figures" / "make_readme_figures.py").read_text()
    for path in images:
        assert (ROOT / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (ROOT / path).stat().st_size < 200_000
        assert Path(path).name in script


def test_the_other_commands_run_as_written(tmp_path):
    """The "Other commands" block line by line, in a fresh directory, as a user types it (the
    last, ``fourbit bench numerics``, is `tests/analysis/test_bench.py`'s: it times kernels for a
    minute)."""
    from tests.analysis.test_cli import fourbit

    section = README.split("## Other commands", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```\n(.*?)```", section, flags=re.S)
    lines = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip()]
    assert lines[-1] == "fourbit bench numerics" and len(lines) == 6
    outputs = []
    for line in lines[:-1]:
        res = fourbit(*shlex.split(line)[1:], cwd=tmp_path)
        assert res.returncode == 0, (line, res.stderr[-2000:])
        outputs.append(res.stdout)
    assert (tmp_path / "runs" / "int4" / "meta.json").is_file()
    assert "presets: " in outputs[2] and "[array]" in outputs[3]
    assert (tmp_path / "explain-out" / "explain.csv").is_file()
