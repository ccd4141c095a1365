"""Piecewise schedules and the joining of schedules (optax's names and arguments)."""

from __future__ import annotations

import numbers

import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, hyperparameter, static
from gradxform._src.protocol.schedule import Schedule
from gradxform._src.schedules.common import (
    ScheduleBase,
    as_float,
    concrete,
    function_schedule,
    one_of,
    require,
    step_tuple,
    value,
)
from gradxform._src.schedules.polynomial import constant_schedule


def _boundaries_and_scales(owner: str, table) -> dict | None:
    """The {step: scale} table with whole-number int keys in increasing order; checked."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise TypeError(f"{owner}: boundaries_and_scales must be a dict {{step: scale}}, "
                        f"got {type(table).__name__}")
    out = {}
    for step, scale in table.items():
        ok = isinstance(step, numbers.Real) and not isinstance(step, bool)
        require(owner, ok and step >= 0 and float(step).is_integer(),
                f"boundaries_and_scales keys must be whole numbers of steps >= 0, got {step!r}")
        s = concrete(scale)
        require(owner, s is None or bool((s >= 0).all()),
                f"scales must be >= 0, got {scale!r} at step {step}")
        out[int(step)] = float(scale) if isinstance(scale, int) else scale
    return dict(sorted(out.items()))


def piecewise_constant(count, init_value, table):
    """I ∏_{b ≤ t} s_b, written as optax writes it (an indicator per boundary)."""
    count = jnp.asarray(count)
    v = init_value
    for threshold, scale in sorted((table or {}).items()):
        indicator = jnp.maximum(0.0, as_float(jnp.sign(threshold - count)))
        v = v * indicator + (1 - indicator) * scale * v
    return v


def _linear_interpolate(start, end, pct):
    return (end - start) * pct + start


def _cosine_interpolate(start, end, pct):
    return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)


def piecewise_interpolate(count, interpolate_type, init_value, table):
    """Interpolates between v_0 = I and v_k = v_{k-1} s_k across the boundaries (as optax)."""
    interpolate = _linear_interpolate if interpolate_type == "linear" else _cosine_interpolate
    items = sorted((table or {}).items())
    boundaries = tuple(b for b, _ in items)
    scales = tuple(s for _, s in items)
    count = jnp.asarray(count)
    bounds = jnp.stack((0,) + boundaries)
    values = jnp.cumprod(jnp.stack((init_value,) + scales))
    interval_sizes = jnp.maximum(bounds[1:] - bounds[:-1], 1)
    indicator = jnp.logical_and(bounds[:-1] <= count, count < bounds[1:])
    pct = as_float(count - bounds[:-1]) / interval_sizes
    interp_vals = interpolate(values[:-1], values[1:], pct)
    past_end = (bounds[-1] <= count).astype(values.dtype)
    return indicator.astype(values.dtype).dot(interp_vals) + past_end * values[-1]


@pytree_dataclass(positional=2)
class piecewise_constant_schedule(ScheduleBase):
    """A constant that is multiplied by a factor at each boundary (optax's name and form).

        η_t = I ∏_{b ≤ t} s_b

    Args:
      init_value: I.
      boundaries_and_scales: {b: s_b}, steps b ≥ 0 (whole numbers) to factors s_b ≥ 0, or None.
        The steps are structure (changing them recompiles); the factors are leaves.

    Returns:
      A schedule of the step count.

    References:
      optax.piecewise_constant_schedule, whose arguments and values this keeps.
    """

    init_value: float = value()
    boundaries_and_scales: dict | None = hyperparameter(None)

    def __post_init__(self):
        table = _boundaries_and_scales(type(self).__name__, self.boundaries_and_scales)
        object.__setattr__(self, "boundaries_and_scales", table)
        super().__post_init__()

    def __call__(self, count):
        return piecewise_constant(count, self.init_value, self.boundaries_and_scales)


@pytree_dataclass(positional=3)
class piecewise_interpolate_schedule(ScheduleBase):
    """Linear or cosine interpolation between accumulated values at boundaries (optax's form).

        v_0 = I,   v_k = v_{k-1} s_k   (the value reached at boundary b_k, with b_0 = 0)
        η_t = interp(v_{k-1}, v_k, (t - b_{k-1}) / (b_k - b_{k-1}))   b_{k-1} ≤ t < b_k
        η_t = v_K                                                    t ≥ b_K

    interp(a, b, p) is a + (b - a) p ("linear") or b + (a - b)(1 + cos πp)/2 ("cosine").

    Args:
      interpolate_type: "linear" or "cosine".
      init_value: I.
      boundaries_and_scales: {b_k: s_k}, steps b_k ≥ 0 to factors s_k ≥ 0, or None.

    Returns:
      A schedule of the step count.

    References:
      optax.piecewise_interpolate_schedule, whose arguments and values this keeps.
    """

    interpolate_type: str = static(check=one_of("linear", "cosine"))
    init_value: float = value()
    boundaries_and_scales: dict | None = hyperparameter(None)

    def __post_init__(self):
        table = _boundaries_and_scales(type(self).__name__, self.boundaries_and_scales)
        object.__setattr__(self, "boundaries_and_scales", table)
        super().__post_init__()

    def __call__(self, count):
        return piecewise_interpolate(count, self.interpolate_type, self.init_value,
                                     self.boundaries_and_scales)


def as_schedule(x) -> Schedule:
    """A schedule from a schedule, a Python function of the step count, or a constant."""
    if isinstance(x, Schedule):
        return x
    if callable(x):
        return function_schedule(x)
    return constant_schedule(x)


@pytree_dataclass(positional=2)
class join_schedules(ScheduleBase):
    """Runs schedules one after another, each restarted at its boundary (optax's `join_schedules`).

        η_t = S_0(t)                 t < b_1
        η_t = S_k(t - b_k)           b_k ≤ t < b_{k+1}

    Three phases of training (linear warmup, cosine decay, then a constant) are
    `join_schedules([linear_schedule(0.0, 1e-3, 1000), cosine_decay_schedule(1e-3, 9000, alpha=0.1),
    constant_schedule(1e-4)], [1000, 10000])`.

    Args:
      schedules: S_0, ..., S_K: schedules, Python functions of the step count (held as static
        data) or constants.
      boundaries: b_1 < ... < b_K, whole numbers of steps ≥ 0, one fewer than the schedules.

    Returns:
      A schedule of the step count.

    References:
      optax.join_schedules, whose arguments and values this keeps.
    """

    schedules: tuple = child()
    boundaries: tuple = hyperparameter(())

    def __post_init__(self):
        schedules = self.schedules
        if isinstance(schedules, Schedule) or callable(schedules):
            raise TypeError("join_schedules: schedules must be a sequence of schedules, got "
                            f"{schedules!r}; pass [{schedules!r}]")
        object.__setattr__(self, "schedules", tuple(as_schedule(s) for s in schedules))
        object.__setattr__(self, "boundaries", step_tuple(self.boundaries))
        super().__post_init__()

    def _validate(self):
        n, b = len(self.schedules), self.boundaries
        require("join_schedules", n > 0, "schedules is empty; give at least one schedule")
        require("join_schedules", len(b) == n - 1,
                f"needs one boundary fewer than schedules ({n - 1} for {n} schedules), got "
                f"{len(b)}: {b}")
        values = [concrete(x) for x in b]
        if any(v is None for v in values):
            return
        for i, v in enumerate(values):
            require("join_schedules", v.ndim == 0 and v >= 0 and float(v).is_integer(),
                    f"boundaries[{i}] must be a whole number of steps >= 0, got {b[i]!r}")
        for i in range(1, len(values)):
            require("join_schedules", values[i] > values[i - 1],
                    f"boundaries must be increasing, got {b} (boundaries[{i}] <= "
                    f"boundaries[{i - 1}]: the schedule between them would never run; drop it)")

    def end_values(self):
        return [(f"{what} of schedules[{i}]", v) for i, s in enumerate(self.schedules)
                for what, v in s.end_values()]

    def __call__(self, count):
        count = jnp.asarray(count)
        out = self.schedules[0](count)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            out = jnp.where(count < boundary, out, schedule(count - boundary))
        return out

