"""Mechanic: a learned scale for any optimizer's updates, by coin betting on the distance.

Mechanic runs a base optimizer and keeps, apart from it, the sum Δ_t of its updates; the
iterate is x_t = x_0 - s_t Δ_t, where the scale s_t = Σ_j s_t,j is bet by several
coin-betting learners (one per decay β_j) on the sign of ⟨g_t, Δ_{t-1}⟩. The base optimizer's
learning rate then need not be tuned, only its schedule's shape.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.clipping import global_norm
from gradxform._src.primitives.distance_estimation import tree_vdot
from gradxform._src.primitives.distance_over_gradients import copy_params, scalar_state_dtype
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import (
    child,
    constant,
    integer_at_least,
    non_negative,
    positive,
    static,
)
from gradxform._src.protocol.transformation import (
    Transformation,
    require_params,
    safe_increment,
)


class MechanicState(NamedTuple):
    base_optimizer_state: Any
    count: Any
    r: Any
    m: Any
    v: Any
    s: Any
    x0: Any


@pytree_dataclass(positional=5)
class mechanize(Transformation):
    """Mechanic's scale learned for the updates of `base_optimizer` (Cutkosky et al. 2023).

        Δ_t = Δ_{t-1} + u_t^base,   x_{t+1} = x_0 - (Σ_j s_t,j) Δ_t    (Δ_0 = 0)
        g̃_t = g_t + λ (Σ_j s_{t-1,j}) ‖g_t‖ / (‖x_t‖ + ε) x_t
        h_t = ⟨g̃_t, Δ_{t-1}⟩,   with Δ_{t-1} = (x_0 - x_t) / (Σ_j s_{t-1,j} + ε)
        for each β_j = 1 - 10^-j, j = 1..n:
          m_t,j = max(β_j m_{t-1,j}, |h_t| + ε),   v_t,j = β_j² v_{t-1,j} + h_t²
          r_t,j = β_j r_{t-1,j} + clip(h_t, ±m_{t-1,j}) s_{t-1,j}
          s_t,j = (s_init m_t,j / n + max(r_t,j, 0)) / (√v_t,j + ε)

    The base optimizer gets the gradients g_t (with the params and any extra arguments);
    its output is taken as a negated step (an update to add, as every optimizer here returns).
    x_0 is the params at the first update. Same numbers as optax's `contrib.mechanize`; the
    state is its `MechanicState`, with the scalars in the params' lowest precision (float32 for
    16-bit params).

    Args:
      base_optimizer: the optimizer whose updates are scaled.
      weight_decay: λ ≥ 0, the decay relative to the gradient's norm.
      eps: ε > 0.
      s_init: s_0,j, each betting learner's initial scale (> 0).
      num_betas: n ≥ 1, the number of decays β_j.

    References:
      Cutkosky, Defazio & Mehta, "Mechanic: A Learning Rate Tuner", NeurIPS 2023
      (arXiv:2306.00144), Algorithm 1.
    """

    base_optimizer: Transformation = child()
    weight_decay: float = constant(0.01, check=non_negative)
    eps: float = constant(1e-8, check=positive)
    s_init: float = constant(1e-6, check=positive)
    num_betas: int = static(6, check=integer_at_least(1))

    def init(self, params):
        dtype = scalar_state_dtype(params)
        n = self.num_betas
        return MechanicState(
            base_optimizer_state=self.base_optimizer.init(params),
            count=jnp.zeros([], jnp.int32), r=jnp.zeros([n], dtype), m=jnp.zeros([n], dtype),
            v=jnp.zeros([n], dtype), s=jnp.ones([n], dtype) * self.s_init,
            x0=copy_params(params))

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "mechanize", "the iterate is x_0 minus the scaled steps")
        base_updates, base_state = self.base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra_args)
        first = state.count == 0
        x0 = jax.tree.map(lambda p, x: jnp.where(first, p, x), params, state.x0)
        dtype = jnp.result_type(state.s)
        eps = self.eps
        s_sum = jnp.sum(state.s)
        decay = (self.weight_decay * s_sum * global_norm(updates).astype(dtype)
                 / (global_norm(params).astype(dtype) + eps))
        lookup = leaf_scalars(dict(decay=decay))
        g_tilde = jax.tree.map(lambda g, p: g + lookup(g).decay * p.astype(g.dtype),
                               updates, params)
        # Δ in the state's precision at least: for 16-bit params, s ≈ 1e-6 is subnormal
        def wide(x):
            narrower = jnp.finfo(x.dtype).bits < jnp.finfo(dtype).bits
            return x.astype(dtype) if narrower else x

        delta_prev = jax.tree.map(lambda x, a: (wide(a) - wide(x)) / (s_sum + eps),
                                  params, x0)
        delta = jax.tree.map(lambda d, u: d - u.astype(d.dtype), delta_prev, base_updates)
        h = tree_vdot(g_tilde, delta_prev, dtype)
        clipped_h = jnp.clip(h, -state.m, state.m)
        betas = jnp.asarray([1.0 - 0.1 ** j for j in range(1, self.num_betas + 1)], dtype)
        m = jnp.maximum(betas * state.m, jnp.abs(h) + eps)
        v = betas ** 2 * state.v + h ** 2
        r = betas * state.r + clipped_h * state.s
        wealth = self.s_init / self.num_betas * m + jnp.maximum(0.0, r)
        s = wealth / (jnp.sqrt(v) + eps)
        step = leaf_scalars(dict(total=jnp.sum(s)))
        new_updates = jax.tree.map(
            lambda a, d, x, g: ((wide(a) - step(d).total * d) - wide(x)).astype(g.dtype),
            x0, delta, params, updates)
        return new_updates, MechanicState(base_state, safe_increment(state.count), r, m, v, s,
                                          x0)

    def hyperparams(self, state) -> dict:
        out = super().hyperparams(state)
        if hasattr(self.base_optimizer, "hyperparams"):
            out["base_optimizer"] = self.base_optimizer.hyperparams(state.base_optimizer_state)
        return out

    def _substates(self, state):
        return [("base_optimizer", self.base_optimizer, state.base_optimizer_state)]
