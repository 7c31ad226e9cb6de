"""Regenerate the committed traces of the tests that only read a trace (``tests/data/<name>``):
the MLP on scikit-learn's digits, trained 2 epochs with seed 0 by ``fp32`` and by ``int4``
(about 70 kB each). Run from the repository's root after a change of the trace format or of what
the emulator records::

    python tests/data/make_traces.py

`tests/conftest.py` reads them (``digits_traces``); one test trains the same runs again and
checks the committed traces are what training gives today, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {"mlp-digits-fp32": ("mlp", "digits", "fp32"), "mlp-digits-int4": ("mlp", "digits", "int4")}
"""Each committed trace's directory name and its (model, data set, recipe)."""
EPOCHS = 2


def train_trace(name: str):
    """The trace of ``RUNS[name]`` trained now (seed 0, `EPOCHS` epochs)."""
    from fourbit.models.trainer import train

    model, dataset, recipe = RUNS[name]
    return train(model, dataset, recipe, epochs=EPOCHS, progress=False).trace


def main() -> None:
    for name in RUNS:
        train_trace(name).write(HERE / name, overwrite=True)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
