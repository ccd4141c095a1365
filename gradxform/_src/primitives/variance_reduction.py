"""MARS: Adam fed a variance-reduced gradient, the gradient corrected by its change.

Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training
Large Models" (arXiv:2411.10438, 2024). The correction clips each leaf's corrected gradient to
unit norm, a whole-leaf reduction, so `scale_by_mars` writes its own `update`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars, map_leaves
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation, safe_increment, zero_count

_unit = in_interval(0, 1, "[)")


class ScaleByMarsState(NamedTuple):
    count: Any
    mu: Any
    nu: Any
    prev_grad: Any


@pytree_dataclass(positional=5)
class scale_by_mars(Transformation):
    """MARS-AdamW's direction: Adam's moments of the gradient corrected by its last change.

        c_t = g_t + γ β1/(1 - β1) (g_t - g_{t-1}),      g_0 = 0
        c_t ← c_t / ‖c_t‖   if ‖c_t‖ > 1                 (‖·‖: Frobenius norm of the leaf)
        m_t = β1 m_{t-1} + (1 - β1) c_t
        v_t = β2 v_{t-1} + (1 - β2) c_t²
        u_t = m̂_t / (√v̂_t + ε),   m̂_t = m_t / (1 - β1^t),  v̂_t = v_t / (1 - β2^t)

    γ (the paper's scaling parameter) weighs the STORM-like correction g_t - g_{t-1}; γ = 0 is
    Adam of the clipped gradient. This is the authors' "approximate" MARS (`is_approx=True`,
    their default): g_{t-1} is the previous step's gradient at the previous params, stored in
    `prev_grad`, not a second gradient of the new batch at the old params. As in their code the
    first step's correction starts from g_0 = 0, so c_1 = (1 + γ β1/(1 - β1)) g_1 before the
    clip. The authors apply this to 2-D params only; `mars` chains it so.

    Args:
      b1: β1 in [0, 1) (authors 0.95).
      b2: β2 in [0, 1) (authors 0.99).
      eps: ε ≥ 0, added to √v̂_t.
      gamma: γ ≥ 0 (authors 0.025).

    References:
      Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training
      Large Models", arXiv:2411.10438, 2024, Algorithm 2 (MARS-AdamW); reference code
      github.com/AGI-Arena/MARS, MARS/optimizers/mars.py.
    """

    b1: ScalarOrSchedule = hyperparameter(0.95, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.99, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    gamma: ScalarOrSchedule = hyperparameter(0.025, check=non_negative)

    def init(self, params):
        return ScaleByMarsState(count=zero_count(), mu=tree_utils.zeros_like(params),
                                nu=tree_utils.real_zeros_like(params),
                                prev_grad=tree_utils.zeros_like(params))

    def update(self, updates, state, params=None, **extra_args):
        h = self.at(state.count)
        t = safe_increment(state.count)
        lookup = leaf_scalars(dict(b1=h.b1, b2=h.b2, eps=h.eps,
                                   k=h.gamma * h.b1 / (1 - h.b1),
                                   c1=1 / one_minus_power(h.b1, t),
                                   c2=1 / one_minus_power(h.b2, t)))

        def leaf(g_in, m, v, g_prev):
            m = tree_utils.in_update_precision(m, g_in)
            v = tree_utils.in_update_precision(v, g_in)
            g = tree_utils.widen(g_in, m)
            g_prev = g_prev.astype(g.dtype)
            s = lookup(g, m)
            c = g + s.k * (g - g_prev)                   # c_t = g_t + γ β1/(1-β1)(g_t - g_{t-1})
            norm = jnp.sqrt(jnp.sum(abs_sq(c)))
            c = jnp.where(norm > 1, c / jnp.where(norm > 1, norm, 1), c)   # unit-norm clip
            m = ema_step(m, c, s.b1)                     # m_t = β1 m_{t-1} + (1 - β1) c_t
            v = ema_step(v, abs_sq(c), s.b2)             # v_t = β2 v_{t-1} + (1 - β2) c_t²
            u = m * s.c1 / (jnp.sqrt(v * s.c2) + s.eps)  # m̂_t / (√v̂_t + ε)
            return u.astype(g_in.dtype), m, v, g

        u, mu, nu, prev = map_leaves(leaf, updates, state.mu, state.nu, state.prev_grad,
                                     num_outputs=4)
        prev = jax.tree.map(lambda g, p: g.astype(p.dtype), prev, state.prev_grad)
        mu = jax.tree.map(lambda m, p: m.astype(p.dtype), mu, state.mu)
        nu = jax.tree.map(lambda v, p: v.astype(p.dtype), nu, state.nu)
        return u, ScaleByMarsState(count=t, mu=mu, nu=nu, prev_grad=prev)
