"""Momenta that remember far back: AdEMAMix's mixture of a fast and a slow EMA, and its
simplified form, a sum of gradients with a slow decay.

An EMA with β near 1 (0.9999: a window of 10⁴ steps) keeps using gradients that the usual
β1 = 0.9 has long forgotten; the paper finds that old gradients stay useful, and mixes such a
slow EMA into Adam's update. Both directions are elementwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule

_unit = in_interval(0, 1, "[)")


class ScaleByAdemamixState(NamedTuple):
    count: Any
    m1: Any
    m2: Any
    nu: Any


@pytree_dataclass(positional=7)
class scale_by_ademamix(ElementwiseTransformation):
    """AdEMAMix's direction: Adam's plus α times a slow EMA of the gradients.

        m1_t = β1 m1_{t-1} + (1 - β1) g_t          (fast, bias-corrected)
        m2_t = β3 m2_{t-1} + (1 - β3) g_t          (slow, not bias-corrected)
        ν_t  = β2 ν_{t-1} + (1 - β2) g_t²
        u_t  = (m̂1_t + α m2_t) / (√(ν̂_t + ε_root) + ε),   x̂_t = x_t / (1 - β^t)

    β3 and α may be schedules (the paper warms both up, α linearly and β3 so that the slow
    window grows linearly, over the first steps: without it the large α m2 of the first
    gradients destabilises training). They are read at the step count, as every schedule here.
    Same numbers as optax's `contrib.scale_by_ademamix`, which stores ν in `mu_dtype` too, as
    here; optax's state also carries a second step count `count_m2`, always equal to `count`,
    which this state leaves out.

    Args:
      b1: β1 in [0, 1), the fast EMA's decay.
      b2: β2 in [0, 1), the second moment's decay.
      b3: β3 in [0, 1), the slow EMA's decay (a schedule for the paper's warmup).
      alpha: α ≥ 0, the slow EMA's weight (a schedule for the paper's warmup).
      eps: ε ≥ 0, added outside the root.
      eps_root: ε_root ≥ 0, added inside the root.
      mu_dtype: the dtype of m1, m2 and ν (default: the params').

    References:
      Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
      2024 (arXiv:2409.03137), Algorithm 1.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    b3: ScalarOrSchedule = hyperparameter(0.9999, check=_unit)
    alpha: ScalarOrSchedule = hyperparameter(6.0, check=non_negative)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    eps_root: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    mu_dtype: DTypeLike | None = static(None)

    state_type = ScaleByAdemamixState

    def init_buffers(self, params):
        return (tree_utils.zeros_like(params, self.mu_dtype),
                tree_utils.zeros_like(params, self.mu_dtype),
                tree_utils.real_zeros_like(params, self.mu_dtype))

    def step_scalars(self, h, t):
        return dict(b1=h.b1, b2=h.b2, b3=h.b3, alpha=h.alpha, eps=h.eps, eps_root=h.eps_root,
                    c1=1 / one_minus_power(h.b1, t), c2=1 / one_minus_power(h.b2, t))

    def element(self, s, g, m1, m2, nu):
        m1 = ema_step(m1, g, s.b1)                       # m1_t = β1 m1_{t-1} + (1 - β1) g_t
        m2 = ema_step(m2, g, s.b3)                       # m2_t = β3 m2_{t-1} + (1 - β3) g_t
        nu = ema_step(nu, abs_sq(g), s.b2)               # ν_t = β2 ν_{t-1} + (1 - β2) g_t²
        u = (m1 * s.c1 + s.alpha * m2) / (jnp.sqrt(nu * s.c2 + s.eps_root) + s.eps)
        return u, (m1, m2, nu)


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    count: Any
    m: Any
    n: Any


@pytree_dataclass(positional=5)
class scale_by_simplified_ademamix(ElementwiseTransformation):
    """Simplified AdEMAMix's direction: a sum of gradients with slow decay, plus α g_t.

        m_t = β1 m_{t-1} + g_t                     (no 1 - β1: a discounted sum)
        n_t = β2 n_{t-1} + (1 - β2) g_t²
        u_t = (m_t + α g_t) / (√(n̂_t + ε_root) + ε),   n̂_t = n_t / (1 - β2^t)

    One momentum instead of AdEMAMix's two: with β1 near 1 the sum m_t reaches far back, and
    α g_t gives the current gradient the weight the fast EMA gave it (α = 0, the default, is
    Adam's direction with a "theory-style" undamped momentum, which the paper shows can match
    AdEMAMix at large batch sizes). Same numbers as optax's
    `contrib.scale_by_simplified_ademamix`; its state names the count `t`.

    Args:
      b1: β1 in [0, 1), the momentum's decay.
      b2: β2 in [0, 1), the second moment's decay.
      alpha: α ≥ 0, the current gradient's extra weight (may be a schedule).
      eps: ε ≥ 0, added outside the root.
      eps_root: ε_root ≥ 0, added inside the root.

    References:
      Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
      Accelerated SGD Variants", 2025 (arXiv:2502.02431).
    """

    b1: ScalarOrSchedule = hyperparameter(0.99, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.95, check=_unit)
    alpha: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    eps_root: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)

    state_type = ScaleBySimplifiedAdEMAMixState

    def init_buffers(self, params):
        return tree_utils.zeros_like(params), tree_utils.real_zeros_like(params)

    def step_scalars(self, h, t):
        return dict(b1=h.b1, b2=h.b2, alpha=h.alpha, eps=h.eps, eps_root=h.eps_root,
                    c2=1 / one_minus_power(h.b2, t))

    def element(self, s, g, m, n):
        m = s.b1 * m + g                                 # m_t = β1 m_{t-1} + g_t
        n = ema_step(n, abs_sq(g), s.b2)                 # n_t = β2 n_{t-1} + (1 - β2) g_t²
        return (m + s.alpha * g) / (jnp.sqrt(n * s.c2 + s.eps_root) + s.eps), (m, n)
