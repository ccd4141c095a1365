"""MADGRAD: momentumized, adaptive dual averaging.

Dual averaging steps from the initial point x_0 along the weighted sum of all gradients so
far, rather than from the current point along the newest one; MADGRAD scales that sum by the
cube root of the weighted sum of squared gradients (AdaGrad's denominator with a cube root in
place of the square root) and moves x towards the dual-averaging point with momentum.
Elementwise, given the params.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import float_count


class MadgradState(NamedTuple):
    count: Any
    grad_sum_sq: Any
    s: Any
    x0: Any


@pytree_dataclass(positional=3)
class scale_by_madgrad(ElementwiseTransformation):
    """MADGRAD's update, learning rate included (it weights the sums, not only the step).

        λ_t = (η_t + ε) √t                          (t = 1 at the first step)
        v_t = v_{t-1} + λ_t g_t²,    s_t = s_{t-1} + λ_t g_t
        z_t = x_0 - s_t / (∛v_t + ε)
        x_t = (1 - c) z_t + c x_{t-1},   u_t = x_t - x_{t-1}

    with c = `momentum`. The weights λ_t grow like √t, as the paper's, so that later gradients
    count more in both sums. `init` stores x_0, the params it is given. Same numbers as optax's
    `contrib.scale_by_madgrad` (which adds ε to η, as here); its state is `MadgradState`.

    Args:
      learning_rate: η ≥ 0 (may be a schedule).
      momentum: c in [0, 1): how much of x_{t-1} the new iterate keeps.
      eps: ε ≥ 0, added to η and to the cube root.

    References:
      Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
      Averaged Gradient Method for Stochastic Optimization", JMLR 2022 (arXiv:2101.11075),
      Algorithm 1.
    """

    learning_rate: ScalarOrSchedule = hyperparameter(check=non_negative)
    momentum: ScalarOrSchedule = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    eps: ScalarOrSchedule = hyperparameter(1e-6, check=non_negative)

    state_type = MadgradState
    needs_params = True

    def init_buffers(self, params):
        return (tree_utils.real_zeros_like(params), tree_utils.zeros_like(params),
                jax.tree.map(jnp.copy, params))  # x0 its own array: a step may donate params

    def step_scalars(self, h, t):
        return dict(momentum=h.momentum, eps=h.eps,
                    lamb=(h.learning_rate + h.eps) * jnp.sqrt(float_count(t)))

    def element(self, s, g, v, s_sum, x0, p=None):
        x = p.astype(g.dtype)
        v = v + s.lamb * abs_sq(g)                       # v_t = v_{t-1} + λ_t g_t²
        s_sum = s_sum + s.lamb * g                       # s_t = s_{t-1} + λ_t g_t
        z = x0.astype(g.dtype) - s_sum / (jnp.cbrt(v) + s.eps)  # z_t = x_0 - s_t / (∛v_t + ε)
        x_new = (1 - s.momentum) * z + s.momentum * x    # x_t = (1 - c) z_t + c x_{t-1}
        return x_new - x, (v, s_sum, x0)
