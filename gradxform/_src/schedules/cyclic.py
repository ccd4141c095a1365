"""Cyclical schedules: torch's `CyclicLR` (Smith 2017) and optax's one-cycle schedules."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import in_interval, positive, static
from gradxform._src.schedules.common import (
    ScheduleBase,
    as_float,
    one_of,
    positive_steps,
    require,
    value,
)
from gradxform._src.schedules.piecewise import piecewise_interpolate


def _triangle(t, step_size_up, step_size_down):
    """(cycle, scale): the 1-based cycle of step t and the triangle wave in [0, 1] within it."""
    total = step_size_up + step_size_down
    index = jnp.floor(t / total)
    # t / total can round across a whole number; re-derive the cycle from the exact remainder
    position = t - index * total
    index = jnp.where(position < 0, index - 1, jnp.where(position >= total, index + 1, index))
    position = t - index * total
    scale = jnp.where(position <= step_size_up, position / step_size_up,
                      (total - position) / step_size_down)
    return index + 1, scale


@pytree_dataclass(positional=8)
class cyclic_lr_schedule(ScheduleBase):
    """Cyclical learning rate: a triangle wave between `base_lr` and `max_lr` (torch's `CyclicLR`).

        cycle = ⌊1 + t / (s_up + s_down)⌋,   x = t - (cycle - 1)(s_up + s_down)
        scale = x / s_up  if x ≤ s_up  else  (s_up + s_down - x) / s_down
        η_t = η_base + (η_max - η_base) · scale · f

    f is 1 ("triangular"), 1 / 2^(cycle - 1) ("triangular2", the amplitude halves every cycle),
    γ^t ("exp_range"), or `scale_fn(cycle)` / `scale_fn(t)` for a custom `scale_fn` (per
    `scale_mode`, "cycle" by default). torch's cycled momentum, max_m - (max_m - base_m)·scale·f,
    is `cyclic_lr_schedule(base_lr=max_momentum, max_lr=base_momentum, ...)`.

    Args:
      base_lr: η_base, the value at the start of each cycle.
      max_lr: η_max, the value at the top of the first cycle.
      step_size_up: s_up > 0, the steps from η_base to the top.
      step_size_down: s_down > 0, the steps back down; None means s_up.
      mode: "triangular", "triangular2" or "exp_range".
      gamma: γ > 0, the per-step amplitude factor of "exp_range".
      scale_fn: a custom amplitude f (a jax-traceable function); replaces `mode`.
      scale_mode: "cycle" or "iterations", what `scale_fn` receives; only with `scale_fn`.

    Returns:
      A schedule of the step count.

    References:
      Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
      torch.optim.lr_scheduler.CyclicLR.
    """

    base_lr: float = value()
    max_lr: float = value()
    step_size_up: float = value(2000.0, check=positive)
    step_size_down: float | None = value(None, check=positive)
    mode: str = static("triangular", check=one_of("triangular", "triangular2", "exp_range"))
    gamma: float = value(1.0, check=positive)
    scale_fn: Callable | None = static(None)
    scale_mode: str | None = static(None, check=one_of(None, "cycle", "iterations"))

    def _validate(self):
        require("cyclic_lr_schedule", self.scale_mode is None or self.scale_fn is not None,
                f"scale_mode={self.scale_mode!r} applies only to a custom scale_fn; mode="
                f"{self.mode!r} fixes it (torch ignores it silently). Drop scale_mode or pass "
                f"scale_fn")

    def __call__(self, count):
        t = as_float(count)
        down = self.step_size_up if self.step_size_down is None else self.step_size_down
        cycle, scale = _triangle(t, self.step_size_up, down)
        if self.scale_fn is not None:
            f = self.scale_fn(t if self.scale_mode == "iterations" else cycle)
        elif self.mode == "triangular":
            f = 1.0
        elif self.mode == "triangular2":
            f = 1 / (2.0 ** (cycle - 1))
        else:
            f = jnp.power(self.gamma, t)
        return self.base_lr + (self.max_lr - self.base_lr) * scale * f


_fraction = in_interval(0, 1, "[]")


@pytree_dataclass(positional=6)
class linear_onecycle_schedule(ScheduleBase):
    """One cycle of three linear phases (optax's `linear_onecycle_schedule`).

        P/d → P          over steps [0, ⌊a T⌋)
        P → P/d          over steps [⌊a T⌋, ⌊b T⌋)
        P/d → P/(d d')   over steps [⌊b T⌋, T), then held

    with a = pct_start, b = pct_final, d = div_factor, d' = final_div_factor (optax's
    `piecewise_interpolate_schedule("linear", ...)` with these boundaries).

    Args:
      transition_steps: T > 0 (structure: the boundaries are whole steps computed from it).
      peak_value: P.
      pct_start: a in [0, 1], the fraction of T spent rising.
      pct_final: b in [a, 1], where the fall back to P/d ends.
      div_factor: d > 0.
      final_div_factor: d' > 0.

    Returns:
      A schedule of the step count.

    References:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
      Learning Rates", 2017.
    """

    transition_steps: int = static(check=positive_steps)
    peak_value: float = value()
    pct_start: float = static(0.3, check=_fraction)
    pct_final: float = static(0.85, check=_fraction)
    div_factor: float = value(25.0, check=positive)
    final_div_factor: float = value(1e4, check=positive)

    def _validate(self):
        require("linear_onecycle_schedule", self.pct_start <= self.pct_final,
                f"pct_start ({self.pct_start}) must not exceed pct_final ({self.pct_final})")

    def __call__(self, count):
        T = int(self.transition_steps)
        table = {
            int(self.pct_start * T): self.div_factor,
            int(self.pct_final * T): 1.0 / self.div_factor,
            T: 1.0 / self.final_div_factor,
        }
        return piecewise_interpolate(count, "linear", self.peak_value / self.div_factor, table)


@pytree_dataclass(positional=5)
class cosine_onecycle_schedule(ScheduleBase):
    """One cycle: cosine up to the peak, cosine down (optax's `cosine_onecycle_schedule`).

        P/d → P            cosine over steps [0, ⌊a T⌋)
        P → P/(d d')       cosine over steps [⌊a T⌋, T), then held

    Args:
      transition_steps: T > 0 (structure: the boundary is a whole step computed from it).
      peak_value: P.
      pct_start: a in [0, 1], the fraction of T spent rising.
      div_factor: d > 0, the start value is P/d.
      final_div_factor: d' > 0, the final value is P/(d d').

    Returns:
      A schedule of the step count.

    References:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
      Learning Rates", 2017.
    """

    transition_steps: int = static(check=positive_steps)
    peak_value: float = value()
    pct_start: float = static(0.3, check=_fraction)
    div_factor: float = value(25.0, check=positive)
    final_div_factor: float = value(1e4, check=positive)

    def __call__(self, count):
        T = int(self.transition_steps)
        table = {
            int(self.pct_start * T): self.div_factor,
            T: 1.0 / (self.div_factor * self.final_div_factor),
        }
        return piecewise_interpolate(count, "cosine", self.peak_value / self.div_factor, table)

