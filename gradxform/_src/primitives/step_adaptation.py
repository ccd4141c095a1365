"""Per-coordinate step sizes that need no global learning rate: Adadelta and Rprop.

Adadelta gives each coordinate the step RMS[Δθ]/RMS[g] · g, whose units are those of θ; Rprop
keeps one step size per coordinate and only reads the sign of the gradient, growing the step
while the sign holds and shrinking it when the sign flips. Both are elementwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import constant, in_interval, non_negative, positive, static
from gradxform._src.protocol.transformation import zero_count


class ScaleByAdaDeltaState(NamedTuple):
    """`e_g`: E[g²], the average of the squared gradients; `e_x`: E[Δθ²], of the squared steps."""

    e_g: Any
    e_x: Any


@pytree_dataclass(positional=2)
class scale_by_adadelta(ElementwiseTransformation):
    """Adadelta's direction: the gradient in the units of θ, RMS[Δθ]_{t-1} / RMS[g]_t · g_t.

        E[g²]_t  = ρ E[g²]_{t-1} + (1 - ρ) g_t²
        Δθ_t     = √(E[Δθ²]_{t-1} + ε) / √(E[g²]_t + ε) · g_t        (the update)
        E[Δθ²]_t = ρ E[Δθ²]_{t-1} + (1 - ρ) Δθ_t²

    Both averages start at zero, so the first steps are about √ε / RMS[g] · g; the step then
    grows as E[Δθ²] accumulates. optax's `scale_by_adadelta` and torch.optim.Adadelta compute
    this same equation (ε inside both roots); they differ only in the presets around it: torch
    multiplies by lr = 1.0 by default, and optax's `adadelta(learning_rate=None)` skips the
    learning rate, sign included (see `adadelta`).

    Args:
      rho: ρ in [0, 1), the decay of both averages (0.9).
      eps: ε ≥ 0, inside both roots (1e-6).

    Returns:
      A transformation with state `ScaleByAdaDeltaState(e_g, e_x)`, optax's.

    References:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, 2012, Algorithm 1.
    """

    rho: float = constant(0.9, check=in_interval(0, 1, "[)"))
    eps: float = constant(1e-6, check=non_negative)

    state_type = ScaleByAdaDeltaState

    def init_buffers(self, params):
        return tree_utils.real_zeros_like(params), tree_utils.real_zeros_like(params)

    def element(self, s, g, e_g, e_x):
        e_g = ema_step(e_g, abs_sq(g), s.rho)            # E[g²]_t = ρ E[g²]_{t-1} + (1 - ρ) g²
        u = jnp.sqrt(e_x + s.eps) / jnp.sqrt(e_g + s.eps) * g   # RMS[Δθ]_{t-1} / RMS[g]_t g
        e_x = ema_step(e_x, abs_sq(u), s.rho)            # E[Δθ²]_t = ρ E[Δθ²]_{t-1} + (1 - ρ) Δθ²
        return u, (e_g, e_x)


class ScaleByRpropState(NamedTuple):
    """`step_sizes`: each coordinate's step; `prev_updates`: what the next sign test reads (the
    last signed step with `convention="optax"`, the last gradient with "torch")."""

    step_sizes: Any
    prev_updates: Any


_CONVENTIONS = ("optax", "torch")


@pytree_dataclass(positional=5)
class scale_by_rprop(ElementwiseTransformation):
    """Rprop's direction: a step per coordinate, grown while the gradient's sign holds.

        s_t = g_t · g_{t-1}
        Δ_t = min(Δ_{t-1} η⁺, Δ_max)   if s_t > 0
              max(Δ_{t-1} η⁻, Δ_min)   if s_t < 0
              Δ_{t-1}                  if s_t = 0
        u_t = sign(g_t) Δ_t,  and 0 where s_t < 0 (no step after a sign flip; that gradient is
              then forgotten, g_t := 0, so the next step only restarts)

    (Rprop⁻ without weight backtracking, Igel & Hüsken's iRprop⁻.) Two conventions, one option:
    - `convention="optax"` (default): optax's `scale_by_rprop`, which returns at step t the
      signed step it decided at step t - 1 (the first update is zero), zeroed where s_t < 0;
      g_{t-1} above is that stored signed step (the same sign), and Δ is not clipped where
      s_t = 0.
    - `convention="torch"`: torch.optim.Rprop, which takes the step it decides at once and
      clips Δ to [Δ_min, Δ_max] at every step, s_t = 0 included. torch's `etas=(η⁻, η⁺)` and
      `step_sizes=(Δ_min, Δ_max)`; Δ_0 = its lr. (torch zeroes the gradient where the factor
      it chose equals η⁻, which is where s_t < 0 unless η⁻ is 1 or η⁺.)

    Args:
      learning_rate: Δ_0 > 0, the initial step size of every coordinate (read once, at init).
      eta_minus: η⁻ in (0, 1), the factor after a sign flip (0.5).
      eta_plus: η⁺ > 0 (1.2), the factor while the sign holds.
      min_step_size: Δ_min ≥ 0 (1e-6).
      max_step_size: Δ_max > 0 (50).
      convention: "optax" or "torch" (see above).

    Returns:
      A transformation with state `ScaleByRpropState(step_sizes, prev_updates)`, optax's. Its
      updates are the direction; `rprop` negates them.

    References:
      Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation Learning: The
      RPROP Algorithm", ICNN 1993.
      Igel & Hüsken, "Empirical evaluation of the improved Rprop learning algorithms",
      Neurocomputing 50, 2003.
    """

    learning_rate: float = constant(check=positive)
    eta_minus: float = constant(0.5, check=in_interval(0, 1, "()"))
    eta_plus: float = constant(1.2, check=positive)
    min_step_size: float = constant(1e-6, check=non_negative)
    max_step_size: float = constant(50.0, check=positive)
    convention: str = static(
        "optax", check=lambda x: None if x in _CONVENTIONS else "'optax' or 'torch'")

    state_type = ScaleByRpropState

    def init_buffers(self, params):
        return (tree_utils.full_like(params, self.at(zero_count()).learning_rate),
                tree_utils.zeros_like(params))

    def element(self, s, g, step, prev):
        sign = g * prev                                  # s_t = g_t g_{t-1}
        grow = jnp.where(sign > 0, s.eta_plus, s.eta_minus)
        if self.convention == "torch":
            factor = jnp.where(sign == 0, 1, grow)
            step = jnp.clip(step * factor, s.min_step_size, s.max_step_size)
            g = jnp.where(sign < 0, 0, g)                # forget the gradient after a flip
            return jnp.sign(g) * step, (step, g)
        step = jnp.where(sign == 0, step,
                         jnp.clip(step * grow, s.min_step_size, s.max_step_size))
        decided = jnp.where(sign < 0, 0, step * jnp.sign(g))
        return jnp.where(sign < 0, 0, prev), (step, decided)
