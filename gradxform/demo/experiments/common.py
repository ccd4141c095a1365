"""Helpers shared by the experiments: float64 runs, quickly compiled loops, plain-text tables."""

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


def quick_jit(fn=None, **jit_kwargs):
    """`jax.jit` for a whole training run that computes for a fraction of a second and would
    compile for seconds: XLA's backend optimizes less (measured on the XOR run: 1.9 s to compile
    instead of 3.2 s, 0.15 s to run instead of 0.10 s). The numbers are the same operations;
    float results can differ in the last bits, so runs compared with numpy to rounding (the
    Rosenbrock comparison) keep `jax.jit`."""
    options = {"xla_backend_optimization_level": 0}
    if fn is None:
        return lambda f: jax.jit(f, compiler_options=options, **jit_kwargs)
    return jax.jit(fn, compiler_options=options, **jit_kwargs)


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
