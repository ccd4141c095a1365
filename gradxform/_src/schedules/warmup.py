"""Warmup schedules from the papers: the Transformer's inverse square root, warmup-stable-decay."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import positive, static
from gradxform._src.schedules.common import (
    ScheduleBase,
    as_float,
    one_of,
    safe_divisor,
    steps,
    value,
)


@pytree_dataclass(positional=3)
class transformer_schedule(ScheduleBase):
    """The Transformer's warmup then inverse-square-root decay ("Noam" schedule).

        η = factor · d_model^-0.5 · min(n^-0.5, n · warmup^-1.5),   n = t + 1

    n is the paper's step_num, 1 for the first update: the schedule is evaluated at the step
    count t before it is incremented, so n = t + 1. The value rises linearly for `warmup_steps`
    updates to its peak factor · (d_model · warmup)^-0.5 at n = warmup, then decays as n^-0.5.

    Args:
      d_model: the model width, > 0.
      warmup_steps: warmup > 0 (4000 in the paper).
      factor: a multiplier of the whole curve (1 in the paper).

    Returns:
      A schedule of the step count.

    References:
      Vaswani et al., "Attention Is All You Need", NeurIPS 2017, eq. (3).
    """

    d_model: float = value(check=positive)
    warmup_steps: int = steps(4000, positive=True)
    factor: float = value(1.0)

    def __call__(self, count):
        n = as_float(count) + 1
        peak_scale = self.factor * self.d_model**-0.5
        return peak_scale * jnp.minimum(jax.lax.rsqrt(n), n * self.warmup_steps**-1.5)


def _decay_shape(decay_type, frac):
    """The fraction of the way from the peak to the end value still left, 1 → 0."""
    if decay_type == "linear":
        return 1 - frac
    if decay_type == "cosine":
        return 0.5 * (1 + jnp.cos(jnp.pi * frac))
    return 1 - jnp.sqrt(frac)  # "1-sqrt"


@pytree_dataclass(positional=7)
class warmup_stable_decay_schedule(ScheduleBase):
    """Warmup-stable-decay (WSD, "trapezoidal"): warmup, a long constant phase, a short decay.

        η_t = I + (P - I) t / W                 t < W             (warmup)
        η_t = P                                 W ≤ t < W + S     (stable)
        η_t = E + (P - E) · g((t - W - S) / D)  W + S ≤ t < W + S + D   (decay)
        η_t = E                                 t ≥ W + S + D

    g(x) is 1 - x ("linear"), (1 + cos πx)/2 ("cosine") or 1 - √x ("1-sqrt", Hägele et al.).
    The stable phase does not depend on the training length, so runs of several lengths can
    branch their decays off one stable run. Unlike `warmup_cosine_decay_schedule`, the three
    arguments are the lengths of the three phases.

    Args:
      init_value: I, the value at step 0.
      peak_value: P, the value of the stable phase.
      warmup_steps: W ≥ 0.
      stable_steps: S ≥ 0.
      decay_steps: D > 0.
      end_value: E, the value after the decay.
      decay_type: "linear", "cosine" or "1-sqrt".

    Returns:
      A schedule of the step count.

    References:
      Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with Scalable
      Training Strategies", 2024.
      Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
      Durations", NeurIPS 2024.
    """

    init_value: float = value()
    peak_value: float = value()
    warmup_steps: int = steps()
    stable_steps: int = steps()
    decay_steps: int = steps(positive=True)
    end_value: float = value(0.0)
    decay_type: str = static("linear", check=one_of("linear", "cosine", "1-sqrt"))

    def end_values(self):
        return [("value at step 0", self.init_value), ("peak value", self.peak_value),
                ("final value", self.end_value)]

    def __call__(self, count):
        t = as_float(count)
        W, S, D = self.warmup_steps, self.stable_steps, self.decay_steps
        init, peak, end = self.init_value, self.peak_value, self.end_value
        warmup = (init - peak) * (1 - jnp.clip(t, 0, W) / safe_divisor(W)) + peak
        frac = jnp.clip((t - W - S) / D, 0, 1)
        decay = end + (peak - end) * _decay_shape(self.decay_type, frac)
        # explicit phases: under jit (t - W - S) / D is a product with 1/D and can miss 1 by an ulp
        return jnp.where(t < W, warmup,
                         jnp.where(t < W + S, peak, jnp.where(t < W + S + D, decay, end)))
