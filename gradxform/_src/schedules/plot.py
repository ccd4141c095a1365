"""Drawing schedules with matplotlib, imported only when a plot is asked for."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _values(schedule: Callable, num_steps: int, *, start: int = 0) -> jax.Array:
    """The curve of any schedule (a `Schedule` or a Python function) at num_steps steps.

        [η_start, η_start+1, ..., η_start+num_steps-1]

    Args:
      schedule: a function of the step count.
      num_steps: how many steps, ≥ 0.
      start: the first step.

    Returns:
      An array of shape (num_steps,), evaluated in one vectorised call.
    """
    if (not isinstance(num_steps, numbers.Integral) or isinstance(num_steps, bool)
            or num_steps < 0):
        raise ValueError(f"plot: num_steps must be an integer >= 0, got {num_steps!r}")
    counts = jnp.arange(start, start + num_steps, dtype=jnp.int32)
    out = jax.vmap(schedule)(counts)
    return jnp.broadcast_to(out, (num_steps,) + jnp.shape(out)[1:])


def _label(schedule) -> str:
    return getattr(schedule, "__name__", None) or type(schedule).__name__


def plot(*schedules: Callable, num_steps: int, ax: Any = None,
         labels: Sequence[str] | None = None, log_scale: bool = False) -> Any:
    """Draws one or several schedules against the step count.

    Args:
      *schedules: `Schedule`s or Python functions of the step count.
      num_steps: the steps 0, ..., num_steps - 1 to draw.
      ax: a matplotlib Axes to draw into; None makes a new figure.
      labels: one legend entry per schedule; by default their names.
      log_scale: a logarithmic value axis (for decays over orders of magnitude).

    Returns:
      The matplotlib Axes.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # matplotlib is optional, only plots need it
        raise ImportError(
            "gradxform.schedules.plot needs matplotlib: pip install matplotlib"
        ) from e
    if not schedules:
        raise ValueError("plot: give at least one schedule")
    if labels is not None and len(labels) != len(schedules):
        raise ValueError(f"plot: {len(labels)} labels for {len(schedules)} schedules")
    if ax is None:
        _, ax = plt.subplots()
    steps = np.arange(num_steps)
    for i, schedule in enumerate(schedules):
        label = labels[i] if labels is not None else _label(schedule)
        ax.plot(steps, np.asarray(_values(schedule, num_steps)), label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    if log_scale:
        ax.set_yscale("log")
    ax.legend()
    return ax
