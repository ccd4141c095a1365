"""Constant, linear and polynomial schedules (optax's names and arguments)."""

from __future__ import annotations

import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import hyperparameter
from gradxform._src.schedules.common import ScheduleBase, as_float, safe_divisor, steps, value


def polynomial(count, init_value, end_value, power, transition_steps, transition_begin=0):
    """(I - E) (1 - clip(t - B, 0, T) / T)^p + E, and the constant I when T = 0 (as optax).

    Under jit with a constant T, XLA divides by multiplying with 1/T, so 1 - T/T can come out as
    -5e-8, and a fractional power of it as NaN (optax gives NaN past the end for p = 0.5); the
    fraction is therefore clipped at 0.
    """
    t = jnp.clip(jnp.asarray(count) - transition_begin, 0, transition_steps)
    frac = jnp.maximum(1 - as_float(t) / safe_divisor(transition_steps), 0.0)
    decayed = (init_value - end_value) * (frac**power) + end_value
    return jnp.where(transition_steps <= 0, init_value, decayed)


@pytree_dataclass(positional=1)
class constant_schedule(ScheduleBase):
    """The same value at every step: η_t = v.

    Args:
      value: v, a float or an array.

    Returns:
      A schedule: `constant_schedule(v)(count)` is v.

    References:
      optax.constant_schedule, whose arguments and values this keeps.
    """

    value: float = value()

    def end_values(self):
        return [("value at step 0", self.value), ("final value", self.value)]

    def __call__(self, count):
        return self.value


@pytree_dataclass(positional=5)
class polynomial_schedule(ScheduleBase):
    """A polynomial transition from `init_value` to `end_value` (optax's `polynomial_schedule`).

        η_t = I                                   t < B
        η_t = (I - E) (1 - (t - B) / T)^p + E     B ≤ t < B + T
        η_t = E                                   t ≥ B + T

    `transition_steps=0` holds I forever, as in optax. Past the end a fractional p gives E where
    optax, under jit, gives NaN (1 - T·(1/T) rounds below 0 there).

    Args:
      init_value: I.
      end_value: E.
      power: p.
      transition_steps: T ≥ 0, the length of the transition.
      transition_begin: B ≥ 0, the steps spent at I before it.

    Returns:
      A schedule of the step count.

    References:
      optax.polynomial_schedule, whose arguments and values this keeps.
    """

    init_value: float = value()
    end_value: float = value()
    power: float = hyperparameter()
    transition_steps: int = steps()
    transition_begin: int = steps(0)

    def end_values(self):
        return [("value at step 0", self.init_value), ("final value", self.end_value)]

    def __call__(self, count):
        return polynomial(count, self.init_value, self.end_value, self.power,
                          self.transition_steps, self.transition_begin)


@pytree_dataclass(positional=4)
class linear_schedule(ScheduleBase):
    """A linear transition from `init_value` to `end_value` (optax's `linear_schedule`).

        η_t = I + (E - I) clip(t - B, 0, T) / T

    `polynomial_schedule` with p = 1; `transition_steps=0` holds I forever.

    Args:
      init_value: I.
      end_value: E.
      transition_steps: T ≥ 0.
      transition_begin: B ≥ 0.

    Returns:
      A schedule of the step count.

    References:
      optax.linear_schedule, whose arguments and values this keeps.
    """

    init_value: float = value()
    end_value: float = value()
    transition_steps: int = steps()
    transition_begin: int = steps(0)

    def end_values(self):
        return [("value at step 0", self.init_value), ("final value", self.end_value)]

    def __call__(self, count):
        return polynomial(count, self.init_value, self.end_value, 1,
                          self.transition_steps, self.transition_begin)


@pytree_dataclass(positional=3)
class warmup_constant_schedule(ScheduleBase):
    """Linear warmup to `peak_value`, then constant (optax's `warmup_constant_schedule`).

        η_t = I + (P - I) min(t, W) / W

    Args:
      init_value: I, the value at step 0.
      peak_value: P, reached at step W and kept.
      warmup_steps: W > 0 (optax would hold I forever for W = 0; `constant_schedule(P)` is
        what is meant then).

    Returns:
      A schedule of the step count.

    References:
      optax.warmup_constant_schedule, whose arguments and values this keeps.
    """

    init_value: float = value()
    peak_value: float = value()
    warmup_steps: int = steps(positive=True)

    def end_values(self):
        return [("value at step 0", self.init_value), ("final value", self.peak_value)]

    def __call__(self, count):
        return polynomial(count, self.init_value, self.peak_value, 1, self.warmup_steps)
