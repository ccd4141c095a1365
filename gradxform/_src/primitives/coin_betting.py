"""Coin betting: each coordinate bets a fraction of its winnings on the sign of the next
gradient, so the step size comes from the gradients' history instead of a learning rate.

COCOB-Backprop keeps, per coordinate, the largest gradient magnitude seen (L), the sum of their
magnitudes (G), the sum of the negated gradients (θ) and the reward (the winnings so far); the
iterate is x_0 plus the bet θ/(L max(G + L, αL)) times the wealth L + reward. Elementwise, given
the params.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import constant, positive


class COCOBState(NamedTuple):
    init_particles: Any
    cumulative_gradients: Any
    scale: Any
    subgradients: Any
    reward: Any


@pytree_dataclass(positional=2)
class scale_by_cocob(ElementwiseTransformation):
    """COCOB-Backprop's update (Orabona & Tommasi 2017, Algorithm 2).

        L_t = max(L_{t-1}, |g_t|),   G_t = G_{t-1} + |g_t|
        R_t = max(R_{t-1} - g_t (x_t - x_0), 0),   θ_t = θ_{t-1} - g_t
        x_{t+1} = x_0 + θ_t / (L_t max(G_t + L_t, α L_t)) (L_t + R_t),   u_t = x_{t+1} - x_t

    with L_0 = ε, G_0 = R_0 = θ_0 = 0, x_0 the params given to `init` and g_t the incoming
    update (the gradient, or the gradient times a learning rate as in `cocob`). α caps the bet
    while G is small (the paper's α = 100). Same numbers as optax's `contrib.scale_by_cocob`;
    the state is its `COCOBState`. There is no step count, so α and ε are constants.

    Args:
      alpha: α > 0.
      eps: ε > 0, the initial L (it must be > 0: the bet divides by L).

    References:
      Orabona & Tommasi, "Training Deep Networks without Learning Rates Through Coin
      Betting", NeurIPS 2017 (arXiv:1705.07795), Algorithm 2.
    """

    alpha: float = constant(100.0, check=positive)
    eps: float = constant(1e-8, check=positive)

    state_type = COCOBState
    needs_params = True

    def init_buffers(self, params):
        return (jax.tree.map(jnp.copy, params), tree_utils.zeros_like(params),
                tree_utils.full_like(params, self.eps), tree_utils.zeros_like(params),
                tree_utils.zeros_like(params))

    def element(self, s, g, x0, theta, L, G, R, p=None):
        x = p.astype(g.dtype)
        x0w = x0.astype(g.dtype)
        L = jnp.maximum(L, jnp.abs(g))                   # L_t = max(L_{t-1}, |g_t|)
        G = G + jnp.abs(g)                               # G_t = G_{t-1} + |g_t|
        R = jnp.maximum(R - g * (x - x0w), 0)            # R_t = max(R_{t-1} - g_t(x_t - x_0), 0)
        theta = theta - g                                # θ_t = θ_{t-1} - g_t
        x_next = x0w + theta / (L * jnp.maximum(G + L, s.alpha * L)) * (L + R)
        return x_next - x, (x0, theta, L, G, R)
