"""Regenerate the README's two figures from a ResNet-18 training step at batch 32 (the SCALE-Sim
topology shipped with fourbit, imported with the ``int4`` recipe; shapes only, no training):

- ``sweep-resnet18.png``: `fourbit.sweep` over the 4-bit chip's array (8x8 .. 128x128), the log
  base (2, 4) and the dataflow (WS, OS): speed-up and energy against the FP16 chip;
- ``compare-resnet18.png``: `fourbit.compare` of the four chip presets, iso-array and iso-area.

Usage (from the repository's root; a few minutes on 2 cores)::

    python docs/figures/make_readme_figures.py [--work DIR] [--workers 2]

The jobs' directories go to ``--work`` (default: a temporary directory, removed afterwards);
only the two PNGs are written here.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import fourbit
from fourbit.analysis.plots import sweep_figures

HERE = Path(__file__).resolve().parent


def make(work: Path, workers: int) -> list[Path]:
    """Run the import, the sweep and the comparison in ``work``; copy the two figures here."""
    trace = work / "resnet18-b32"
    if not (trace / "meta.json").is_file():
        recipe = fourbit.get_recipe("int4").describe()
        fourbit.import_topology("resnet18", 32, recipe).write(trace)
    source = fourbit.Source(trace=str(trace))
    table = fourbit.sweep(source=source, out=str(work / "sweep"), workers=workers,
                          grid=[{"fields": ["array.rows", "array.cols"], "values": [8, 16, 32, 64, 128]},
                                {"fields": "log_path.radix", "values": [2, 4]},
                                {"fields": "array.dataflow", "values": ["ws", "os"]}])
    sweep_figures(table, work / "sweep")
    fourbit.compare(source, out=str(work / "compare"), workers=workers)
    written = []
    for src, name in ((work / "sweep" / "figures" / "speedup_energy_vs_array.png", "sweep-resnet18.png"),
                      (work / "compare" / "figures" / "compare.png", "compare-resnet18.png")):
        shutil.copyfile(src, HERE / name)
        written.append(HERE / name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Regenerate the README's figures docs/figures/sweep-resnet18.png (a sweep of the 4-bit chip's "
                    "array, log base and dataflow against the FP16 chip) and docs/figures/compare-resnet18.png (the "
                    "four chip presets, iso-array and iso-area) from ResNet-18 at batch 32 (an imported topology, no "
                    "training); overwrites both; about 4 minutes on 2 cores.")
    parser.add_argument("--work", type=Path, default=None, help="where the jobs run (default: a temporary directory)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default: 2)")
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory() as tmp:
            paths = make(Path(tmp), args.workers)
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        paths = make(args.work, args.workers)
    for p in paths:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
