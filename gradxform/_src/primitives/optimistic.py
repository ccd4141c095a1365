"""Optimistic gradients: a step along the gradient extrapolated from the last two.

In a min-max game, plain gradient descent-ascent circles around the saddle point (or spirals
away); an extra-gradient method converges by taking the gradient at a look-ahead point, at the
price of a second gradient per step. The optimistic method keeps one gradient per step and uses
the previous one as its prediction of the next: its update is elementwise in (g_t, g_{t-1}).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, non_negative
from gradxform._src.protocol.schedule import ScalarOrSchedule


class ScaleByOptimisticGradientState(NamedTuple):
    count: Any
    previous_gradient: Any


@pytree_dataclass(positional=2)
class scale_by_optimistic_gradient(ElementwiseTransformation):
    """The generalized optimistic gradient: the gradient plus β times its last change.

        u_t = (α + β) g_t - β g_{t-1} = α g_t + β (g_t - g_{t-1}),    g_0 = g_1

    With α = β = 1 it is optimistic gradient descent, u_t = 2 g_t - g_{t-1}, the one-gradient
    approximation of the extra-gradient method (Mokhtari, Ozdaglar & Pattathil); α and β
    apart are its generalized form. β (g_t - g_{t-1}) is a negative momentum: it
    damps the rotation of the iterates in a bilinear game. At the first step there is no
    g_{t-1}, and the step is α g_1, as in optax (which stores a flag `is_initial_step` where
    the count stands here).

    Args:
      alpha: α ≥ 0, the weight of the gradient (1.0).
      beta: β ≥ 0, the weight of its last change (1.0).

    References:
      Mokhtari, Ozdaglar & Pattathil, "A Unified Analysis of Extra-gradient and Optimistic
      Gradient Methods for Saddle Point Problems: Proximal Point Approach", AISTATS 2020.
      Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with Optimism", ICLR 2018.
    """

    alpha: ScalarOrSchedule = hyperparameter(1.0, check=non_negative)
    beta: ScalarOrSchedule = hyperparameter(1.0, check=non_negative)

    state_type = ScaleByOptimisticGradientState

    def init_buffers(self, params):
        return (tree_utils.zeros_like(params),)

    def step_scalars(self, hp, t):
        return dict(alpha_plus_beta=hp.alpha + hp.beta, beta=hp.beta, first=t == 1)

    def element(self, s, g, g_prev):
        g_prev = jnp.where(s.first, g, g_prev)           # g_0 = g_1: no change at the first step
        return s.alpha_plus_beta * g - s.beta * g_prev, (g,)   # u_t = (α + β) g_t - β g_{t-1}
