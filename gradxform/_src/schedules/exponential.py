"""Exponential and step decay: optax's `exponential_decay`, torch's `StepLR` and `MultiStepLR`."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import hyperparameter, non_negative, static
from gradxform._src.schedules.common import (
    ScheduleBase,
    as_float,
    concrete,
    require,
    safe_divisor,
    step_tuple,
    steps,
    value,
)
from gradxform._src.schedules.polynomial import polynomial


def exponential(count, init_value, transition_steps, decay_rate, transition_begin=0,
                staircase=False, end_value=None):
    """I r^((t - B) / T) for t > B (floored exponent if staircase), clipped at E (as optax)."""
    decreased = jnp.asarray(count) - transition_begin
    p = as_float(decreased) / safe_divisor(transition_steps)
    if staircase:
        p = jnp.floor(p)
    decayed = jnp.where(decreased <= 0, init_value, init_value * jnp.power(decay_rate, p))
    if end_value is not None:
        # E bounds the decay from below when r < 1 and from above when r > 1
        decayed = jnp.where(decay_rate < 1.0, jnp.maximum(decayed, end_value),
                            jnp.minimum(decayed, end_value))
    constant = jnp.logical_or(jnp.asarray(transition_steps) <= 0, jnp.asarray(decay_rate) == 0)
    return jnp.where(constant, init_value, decayed)


@pytree_dataclass(positional=6)
class exponential_decay(ScheduleBase):
    """Continuous or staircase exponential decay (optax's `exponential_decay`).

        η_t = I                          t ≤ B
        η_t = I r^((t - B) / T)          t > B      (⌊(t - B) / T⌋ with staircase=True)

    then clipped at E: a floor when r < 1, a ceiling when r > 1. As in optax, `transition_steps=0`
    or `decay_rate=0` hold I forever. torch's `ExponentialLR(gamma)` is T = 1, r = gamma;
    torch's `StepLR` is staircase (also `step_lr_schedule`).

    Args:
      init_value: I.
      transition_steps: T ≥ 0, the steps over which the value is multiplied by r.
      decay_rate: r.
      transition_begin: B ≥ 0, steps held at I first.
      staircase: decay at whole multiples of T only.
      end_value: E, or None for no bound.

    Returns:
      A schedule of the step count.

    References:
      optax.exponential_decay, whose arguments and values this keeps.
    """

    init_value: float = value()
    transition_steps: int = steps()
    decay_rate: float = value()
    transition_begin: int = steps(0)
    staircase: bool = static(False)
    end_value: Any = value(None)

    def end_values(self):
        out = [("value at step 0", self.init_value)]
        return out if self.end_value is None else [*out, ("final value", self.end_value)]

    def __call__(self, count):
        return exponential(count, self.init_value, self.transition_steps, self.decay_rate,
                           self.transition_begin, self.staircase, self.end_value)


@pytree_dataclass(positional=8)
class warmup_exponential_decay_schedule(ScheduleBase):
    """Linear warmup, then exponential decay (optax's `warmup_exponential_decay_schedule`).

        η_t = I + (P - I) t / W                  t < W
        η_t = exponential_decay(P, T, r, B, staircase, E)(t - W)     t ≥ W

    Args:
      init_value: I, the value at step 0.
      peak_value: P, reached at step W.
      warmup_steps: W ≥ 0.
      transition_steps: T ≥ 0 (see `exponential_decay`).
      decay_rate: r.
      transition_begin: B ≥ 0, steps held at P after the warmup.
      staircase: decay at whole multiples of T only.
      end_value: E, the bound of the decay, or None.

    Returns:
      A schedule of the step count.

    References:
      optax.warmup_exponential_decay_schedule, whose arguments and values this keeps.
    """

    init_value: float = value()
    peak_value: float = value()
    warmup_steps: int = steps()
    transition_steps: int = steps()
    decay_rate: float = value()
    transition_begin: int = steps(0)
    staircase: bool = static(False)
    end_value: Any = value(None)

    def end_values(self):
        out = [("value at step 0", self.init_value), ("peak value", self.peak_value)]
        return out if self.end_value is None else [*out, ("final value", self.end_value)]

    def __call__(self, count):
        count = jnp.asarray(count)
        warmup = polynomial(count, self.init_value, self.peak_value, 1, self.warmup_steps)
        decay = exponential(count - self.warmup_steps, self.peak_value, self.transition_steps,
                            self.decay_rate, self.transition_begin, self.staircase,
                            self.end_value)
        return jnp.where(count < self.warmup_steps, warmup, decay)


@pytree_dataclass(positional=3)
class step_lr_schedule(ScheduleBase):
    """Decay by `gamma` every `step_size` steps (torch's `StepLR`).

        η_t = η_0 γ^⌊t / s⌋

    Args:
      init_value: η_0 (torch's initial learning rate of the optimizer).
      step_size: s > 0.
      gamma: γ ≥ 0, the factor applied every s steps.

    Returns:
      A schedule of the step count.

    References:
      torch.optim.lr_scheduler.StepLR.
    """

    init_value: float = value()
    step_size: int = steps(positive=True)
    gamma: float = value(0.1, check=non_negative)

    def __call__(self, count):
        k = jnp.asarray(count) // self.step_size
        return self.init_value * jnp.power(self.gamma, as_float(k))


@pytree_dataclass(positional=3)
class multistep_lr_schedule(ScheduleBase):
    """Decay by `gamma` at each milestone (torch's `MultiStepLR`).

        η_t = η_0 γ^|{m ∈ milestones : m ≤ t}|

    A milestone given twice decays twice, as in torch.

    Args:
      init_value: η_0.
      milestones: the steps at which to decay, non-decreasing, each ≥ 0.
      gamma: γ ≥ 0.

    Returns:
      A schedule of the step count.

    References:
      torch.optim.lr_scheduler.MultiStepLR.
    """

    init_value: float = value()
    milestones: tuple = hyperparameter(())
    gamma: float = value(0.1, check=non_negative)

    def __post_init__(self):
        object.__setattr__(self, "milestones", step_tuple(self.milestones))
        super().__post_init__()

    def _validate(self):
        ms = [concrete(m) for m in self.milestones]
        if any(m is None for m in ms):
            return
        for i, m in enumerate(ms):
            require("multistep_lr_schedule", m.ndim == 0 and m >= 0 and float(m).is_integer(),
                    f"milestones[{i}] must be a whole number of steps >= 0, got {m}")
        for i in range(1, len(ms)):
            require("multistep_lr_schedule", ms[i] >= ms[i - 1],
                    f"milestones must be non-decreasing, got {self.milestones} "
                    f"(milestones[{i}] < milestones[{i - 1}]); sort them")

    def __call__(self, count):
        count = jnp.asarray(count)
        passed = sum((count >= m).astype(jnp.int32) for m in self.milestones)
        return self.init_value * jnp.power(self.gamma, as_float(passed))
