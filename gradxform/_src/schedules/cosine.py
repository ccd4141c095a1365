"""Cosine annealing: optax's cosine decays and SGDR, and torch's `CosineAnnealingWarmRestarts`."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import hyperparameter
from gradxform._src.protocol.transformation import INT32_MAX
from gradxform._src.schedules.common import ScheduleBase, as_float, concrete, require, steps, value
from gradxform._src.schedules.polynomial import polynomial


def cosine_decay(count, init_value, decay_steps, alpha=0.0, exponent=1.0):
    """I ((1 - α) c^p + α) with c = (1 + cos(π min(t, T) / T)) / 2 (as optax)."""
    t = jnp.minimum(as_float(count), decay_steps)
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * t / decay_steps))
    decayed = (1 - alpha) * cosine**exponent + alpha
    return init_value * decayed


def _end_over_peak(end_value, peak_value):
    """α = E / P, and 0 when P = 0 (the whole curve is 0 then), as optax."""
    if isinstance(end_value, numbers.Real) and isinstance(peak_value, numbers.Real):
        return 0.0 if peak_value == 0.0 else end_value / peak_value
    peak_is_zero = jnp.asarray(peak_value) == 0
    return jnp.where(peak_is_zero, 0.0, end_value / jnp.where(peak_is_zero, 1.0, peak_value))


def warmup_cosine_decay(count, init_value, peak_value, warmup_steps, decay_steps,
                        end_value=0.0, exponent=1.0):
    """Linear warmup from I to P over W steps, then cosine from P to E until step T."""
    count = jnp.asarray(count)
    alpha = _end_over_peak(end_value, peak_value)
    warmup = polynomial(count, init_value, peak_value, 1, warmup_steps)
    decay = cosine_decay(count - warmup_steps, peak_value, decay_steps - warmup_steps, alpha,
                         exponent)
    return jnp.where(count < warmup_steps, warmup, decay)


@pytree_dataclass(positional=4)
class cosine_decay_schedule(ScheduleBase):
    """Cosine decay from `init_value` to `alpha * init_value` (optax's `cosine_decay_schedule`).

        η_t = I ((1 - α) [(1 + cos(π min(t, T) / T)) / 2]^p + α)

    Held at α I after step T. p = 1 is the half cosine of SGDR without restarts.

    Args:
      init_value: I.
      decay_steps: T > 0.
      alpha: α, the final value as a fraction of I.
      exponent: p.

    Returns:
      A schedule of the step count.

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """

    init_value: float = value()
    decay_steps: int = steps(positive=True)
    alpha: float = value(0.0)
    exponent: float = hyperparameter(1.0)

    def end_values(self):
        return [("value at step 0", self.init_value), ("final value", self.init_value * self.alpha)]

    def __call__(self, count):
        return cosine_decay(count, self.init_value, self.decay_steps, self.alpha, self.exponent)


def _check_warmup_within_decay(owner, warmup_steps, decay_steps, where=""):
    w, d = concrete(warmup_steps), concrete(decay_steps)
    if w is None or d is None:
        return
    require(owner, bool((d > w).all()),
            f"{where}decay_steps ({decay_steps}) must exceed warmup_steps ({warmup_steps}): as in "
            f"optax, decay_steps counts the warmup, and the cosine lasts decay_steps - "
            f"warmup_steps steps. For W warmup steps then N cosine steps pass "
            f"decay_steps=W + N")


@pytree_dataclass(positional=6)
class warmup_cosine_decay_schedule(ScheduleBase):
    """Linear warmup, then cosine decay (optax's `warmup_cosine_decay_schedule`).

        η_t = I + (P - I) t / W                                       t < W
        η_t = E + (P - E) [(1 + cos(π (t - W) / (T - W))) / 2]^p       W ≤ t ≤ T
        η_t = E                                                       t > T

    (the cosine part is written P((1 - α)c^p + α) with α = E/P, as in optax). T counts the warmup.

    Args:
      init_value: I, the value at step 0.
      peak_value: P, reached at step W.
      warmup_steps: W ≥ 0.
      decay_steps: T > W, the length of the whole schedule, warmup included.
      end_value: E.
      exponent: p.

    Returns:
      A schedule of the step count.

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
      Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017 (warmup).
    """

    init_value: float = value()
    peak_value: float = value()
    warmup_steps: int = steps()
    decay_steps: int = steps(positive=True)
    end_value: float = value(0.0)
    exponent: float = hyperparameter(1.0)

    def _validate(self):
        _check_warmup_within_decay(type(self).__name__, self.warmup_steps, self.decay_steps)

    def end_values(self):
        return [("value at step 0", self.init_value), ("peak value", self.peak_value),
                ("final value", self.end_value)]

    def __call__(self, count):
        return warmup_cosine_decay(count, self.init_value, self.peak_value, self.warmup_steps,
                                   self.decay_steps, self.end_value, self.exponent)


_CYCLE_DEFAULTS = {"end_value": 0.0, "exponent": 1.0}
_CYCLE_KEYS = ("init_value", "peak_value", "warmup_steps", "decay_steps", "end_value", "exponent")


@pytree_dataclass(positional=1)
class sgdr_schedule(ScheduleBase):
    """SGD with warm restarts: warmup-cosine cycles run back to back (optax's `sgdr_schedule`).

        η_t = C_k(t - (T_0 + ... + T_{k-1}))    for the cycle k that holds step t

    where C_k is `warmup_cosine_decay_schedule(**cosine_kwargs[k])` and T_k its `decay_steps`.
    The last cycle holds its end value afterwards. torch's `CosineAnnealingWarmRestarts`, which
    repeats cycles forever, is `cosine_annealing_warm_restarts_schedule`.

    Args:
      cosine_kwargs: one dict per cycle with the arguments of `warmup_cosine_decay_schedule`
        (init_value, peak_value, warmup_steps, decay_steps, and optionally end_value, exponent).

    Returns:
      A schedule of the step count.

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """

    cosine_kwargs: tuple = hyperparameter()

    def __post_init__(self):
        owner = type(self).__name__
        if isinstance(self.cosine_kwargs, Mapping) or not isinstance(self.cosine_kwargs, Iterable):
            raise TypeError(f"{owner}: cosine_kwargs must be a sequence of dicts (one per cycle), "
                            f"got {self.cosine_kwargs!r}")
        cycles = []
        for i, kwargs in enumerate(self.cosine_kwargs):
            unknown = set(kwargs) - set(_CYCLE_KEYS)
            require(owner, not unknown, f"cosine_kwargs[{i}] has unknown keys {sorted(unknown)}; "
                                        f"allowed: {', '.join(_CYCLE_KEYS)}")
            try:  # checks the cycle and normalises its numbers
                cycle = warmup_cosine_decay_schedule(**kwargs)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{owner}: cosine_kwargs[{i}]: {e}") from None
            cycles.append({k: getattr(cycle, k) for k in _CYCLE_KEYS})
        require(owner, len(cycles) > 0, "cosine_kwargs is empty; give at least one cycle")
        object.__setattr__(self, "cosine_kwargs", tuple(cycles))
        super().__post_init__()

    def __call__(self, count):
        count = jnp.asarray(count)
        out, start = None, 0
        for kwargs in self.cosine_kwargs:
            cycle = warmup_cosine_decay(count - start, **kwargs)
            out = cycle if out is None else jnp.where(count < start, out, cycle)
            start = start + kwargs["decay_steps"]
        return out


def _cycle_position(count, T_0, T_mult):
    """(T_cur, T_i): the steps into the current cycle and its length, cycles T_0 T_mult^i long.

    With T_mult > 1 the cycle starts are walked in integers (31 cycles cover any int32 count),
    which avoids torch's log-based formula and its rounding at cycle boundaries. A cycle that
    would end past the int32 range is never left; its length is then computed in floats.
    """
    t = jnp.asarray(count)
    if isinstance(T_mult, numbers.Integral) and T_mult == 1:
        return t % T_0, as_float(T_0)

    def next_cycle(_, carry):
        start, length, n = carry
        passed = (length <= INT32_MAX - start) & (t >= start + length)
        longer = jnp.where(length > INT32_MAX // T_mult, INT32_MAX, length * T_mult)
        return (jnp.where(passed, start + length, start), jnp.where(passed, longer, length),
                n + passed.astype(n.dtype))

    # a loop, not 31 unrolled steps: XLA's fusion would duplicate the chain exponentially
    start, length, n = jax.lax.fori_loop(0, 31, next_cycle, (
        jnp.zeros_like(t), jnp.full_like(t, T_0), jnp.zeros_like(t)))
    T_i = jnp.where(length < INT32_MAX, as_float(length),
                    as_float(T_0) * jnp.power(as_float(T_mult), as_float(n)))
    geometric = jnp.asarray(T_mult) > 1
    T_cur = jnp.where(geometric, t - start, t % T_0)
    T_i = jnp.where(geometric, T_i, as_float(T_0))
    return T_cur, T_i


@pytree_dataclass(positional=4)
class cosine_annealing_warm_restarts_schedule(ScheduleBase):
    """Cosine annealing restarted every cycle, cycles growing by T_mult (torch's form).

        η_t = η_min + (η_0 - η_min) (1 + cos(π T_cur / T_i)) / 2

    T_cur counts the steps since the last restart; the i-th cycle lasts T_i = T_0 T_mult^i steps.
    With T_mult = 1 it is the plain cosine annealing with restarts of period T_0 (as a
    `CosineAnnealingSchedule(lr_max=η_0, lr_min=η_min, T_max=T_0)` class would write it):
    η_min + (η_0 - η_min)(1 + cos(π (t mod T_0) / T_0)) / 2.

    Args:
      init_value: η_0, the value at each restart (torch's base learning rate).
      T_0: T_0 > 0, the length of the first cycle.
      T_mult: T_mult ≥ 1, a whole number, the growth of each cycle over the previous one.
      eta_min: η_min, the value approached at the end of each cycle.

    Returns:
      A schedule of the step count.

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
      torch.optim.lr_scheduler.CosineAnnealingWarmRestarts.
    """

    init_value: float = value()
    T_0: int = steps(positive=True)
    T_mult: int = steps(1, positive=True)
    eta_min: float = value(0.0)

    def __call__(self, count):
        T_cur, T_i = _cycle_position(count, self.T_0, self.T_mult)
        cosine = 1 + jnp.cos(jnp.pi * as_float(T_cur) / T_i)
        return self.eta_min + (self.init_value - self.eta_min) * cosine / 2
