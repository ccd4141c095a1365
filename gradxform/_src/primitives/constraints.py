"""Constraints on the params: updates changed so that the params stay in a set."""

from __future__ import annotations

import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.transformation import EmptyState


@pytree_dataclass
class keep_params_nonnegative(ElementwiseTransformation):
    """Changes the updates so that the params stay non-negative: θ_{t-1} + u_t ≥ 0.

        u_t = -θ_{t-1}   where θ_{t-1} + g_t < 0
        u_t = g_t        elsewhere

    A coordinate that the step would take below zero is set to zero instead: the projection of
    θ_{t-1} + g_t onto the non-negative orthant (projected gradient descent), written as an
    update. It must come last in a chain, after the learning rate, so that `g_t` is the step
    that is applied. A param that is already negative is moved to 0 whatever the step.
    """

    state_type = EmptyState
    needs_params = True

    def element(self, s, g, p=None):
        p = p.astype(g.dtype)
        return jnp.where(p + g < 0, -p, g), ()           # θ + u ≥ 0
