"""Helpers shared by the experiments: float64 runs and plain-text tables."""

from __future__ import annotations

from collections.abc import Sequence

import jax


def float64():
    """A context in which JAX computes in float64 (`jax_enable_x64`), restored on exit.

    numpy computes in float64; runs inside this context can be compared with numpy
    re-derivations of the same experiments to rounding error.
    """
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        return enable(True)
    from jax.experimental import enable_x64  # jax < 0.6

    return enable_x64()


def format_table(headers: Sequence[str], rows: Sequence[Sequence], *, floatfmt: str = ".4f") -> str:
    """A table as aligned plain text: the first column (names) left-aligned, the others right.

    Floats are written with `floatfmt`; anything else with `str`.
    """
    body = [[format(v, floatfmt) if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]

    def line(cells):
        first, *rest = cells
        return "  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:]))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in body)])
