"""Tests of the jobs, the command line, tables and figures."""

from __future__ import annotations

from pathlib import Path


def import_topology_traces(directory: Path, text: str, recipes: tuple[str, ...], batch: int = 8) -> dict[str, Path]:
    """Write the SCALE-Sim topology ``text`` to ``directory/small.csv`` and import it at ``batch``
    once per recipe; returns each recipe's trace directory."""
    from fourbit.models.recipes import get_recipe
    from fourbit.traces.scalesim import import_topology

    (directory / "small.csv").write_text(text)
    out = {}
    for recipe in recipes:
        out[recipe] = directory / recipe.replace(":", "_")
        import_topology(directory / "small.csv", batch, get_recipe(recipe).describe()).write(out[recipe])
    return out
