"""L-BFGS: the update multiplied by an inverse-Hessian estimate built from the last m steps.

BFGS keeps a p × p estimate of the inverse Hessian; L-BFGS never forms it. It keeps the last m
differences of params s_j = w_{j+1} - w_j and of gradients y_j = g_{j+1} - g_j and applies the
estimate they define, H_k = V_{k-1}ᵀ ⋯ V_{k-m}ᵀ (γ_k I) V_{k-m} ⋯ V_{k-1} + (rank-one terms),
V_j = I - ρ_j y_j s_jᵀ, ρ_j = 1 / ⟨y_j, s_j⟩, to a vector in O(m p) by the two-loop recursion:

    q ← g;          for j = k-1, ..., k-m:  α_j = ρ_j ⟨s_j, q⟩,  q ← q - α_j y_j
    r ← γ_k q;      for j = k-m, ..., k-1:  β_j = ρ_j ⟨y_j, r⟩,  r ← r + (α_j - β_j) s_j

and returns r = H_k g. It is a direction, not a step: `lbfgs` follows it with a line search.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import integer_at_least, static
from gradxform._src.protocol.transformation import (
    Transformation,
    require_params,
    safe_increment,
    zero_count,
)


class ScaleByLBFGSState(NamedTuple):
    """`count`: steps taken; `params`, `updates`: the last ones seen (the differences are taken
    from them); `diff_params_memory`, `diff_updates_memory`: the last m differences s_j and y_j,
    stacked on a leading axis of size m, in a ring indexed by count mod m; `weights_memory`:
    their ρ_j."""

    count: Any
    params: Any
    updates: Any
    diff_params_memory: Any
    diff_updates_memory: Any
    weights_memory: Any


def _sum_of_squares(tree, dtype):
    """‖tree‖², leaf by leaf in `dtype` (the sum optax's `tree.norm` forms)."""
    total = jnp.zeros([], dtype)
    for x in jax.tree_util.tree_leaves(tree):
        total = total + jnp.sum(abs_sq(x)).astype(dtype)
    return total


def precondition_by_lbfgs(updates, diff_params_memory, diff_updates_memory, weights_memory,
                          identity_scale, memory_idx: jax.Array):
    """H_k u by the two-loop recursion (Nocedal & Wright, Algorithm 7.4).

    Args:
      updates: u, the vector to precondition.
      diff_params_memory, diff_updates_memory: the s_j and y_j, stacked on axis 0 (a ring).
      weights_memory: the ρ_j (0 for an empty slot, which then does nothing).
      identity_scale: γ_k, the scale of the initial estimate γ_k I.
      memory_idx: the ring slot of the oldest pair.

    Returns:
      H_k u, shaped like `updates`.
    """
    dtype = weights_memory.dtype
    memory_size = weights_memory.shape[0]
    indices = (memory_idx + jnp.arange(memory_size)) % memory_size

    def pair(idx):
        return jax.tree.map(lambda x: x[idx], (diff_params_memory, diff_updates_memory))

    def newest_first(q, idx):
        s, y = pair(idx)
        alpha = weights_memory[idx] * tree_utils.tree_vdot(s, q, dtype)    # α_j = ρ_j ⟨s_j, q⟩
        return tree_utils.cast_like(tree_utils.tree_add_scale(q, -alpha, y), q), alpha

    q, alphas = jax.lax.scan(newest_first, updates, indices, reverse=True)
    r = tree_utils.tree_scale(identity_scale, q)                            # r = γ_k q

    def oldest_first(r, idx_alpha):
        idx, alpha = idx_alpha
        s, y = pair(idx)
        beta = weights_memory[idx] * tree_utils.tree_vdot(y, r, dtype)     # β_j = ρ_j ⟨y_j, r⟩
        return tree_utils.cast_like(tree_utils.tree_add_scale(r, alpha - beta, s), r), beta

    r, _ = jax.lax.scan(oldest_first, r, (indices, alphas))
    return r


@pytree_dataclass(positional=2)
class scale_by_lbfgs(Transformation):
    """Multiplies the updates by the L-BFGS estimate of the inverse Hessian: u_k = H_k g_k.

    First the memory takes the newest pair s = w_k - w_{k-1}, y = g_k - g_{k-1}, ρ = 1/⟨y, s⟩
    (ρ = 0 when ⟨y, s⟩ = 0), then the two-loop recursion (module docstring) applies H_k. The
    initial estimate is γ_k I with

        γ_k = ⟨s, y⟩ / ⟨y, y⟩                (scale_init_precond=True)
        γ_0 = min(1, 1 / ‖g_0‖)              (the first step: at most unit length)

    or γ_k = 1 (scale_init_precond=False). The memory is updated before the product, so in
    `chain(scale_by_lbfgs(), scale(-1.0), <line search>)` it takes the pair of the step the line
    search accepted. Numbers as optax's `scale_by_lbfgs`; 16-bit params keep float32 memories.

    Args:
      memory_size: m ≥ 1, the number of pairs kept.
      scale_init_precond: whether γ_k is the scaled identity above (else 1).

    Returns:
      A transformation with state `ScaleByLBFGSState`; it requires params.

    References:
      Liu & Nocedal, "On the limited memory BFGS method for large scale optimization",
      Mathematical Programming 45, 1989.
      Nocedal & Wright, "Numerical Optimization", 2nd ed., Algorithms 7.4 and 7.5, Springer 2006.
    """

    memory_size: int = static(10, check=integer_at_least(1))
    scale_init_precond: bool = static(True)

    def init(self, params):
        m = self.memory_size
        return ScaleByLBFGSState(
            count=zero_count(),
            params=tree_utils.zeros_like(params),
            updates=tree_utils.zeros_like(params),
            diff_params_memory=jax.tree.map(
                lambda x: jnp.zeros((m,) + jnp.shape(x), tree_utils.moment_dtype(x)), params),
            diff_updates_memory=jax.tree.map(
                lambda x: jnp.zeros((m,) + jnp.shape(x), tree_utils.moment_dtype(x)), params),
            weights_memory=jnp.zeros([m], tree_utils.accumulation_dtype(params)),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, type(self).__name__, "the point the updates were taken at")
        return _lbfgs_step(self.memory_size, self.scale_init_precond, updates, state, params)


def _lbfgs_update(memory_size: int, scale_init_precond: bool, updates, state, params):
    """One update of `scale_by_lbfgs`: the memory takes the newest pair, then H_k g."""
    m = memory_size
    dtype = state.weights_memory.dtype
    first = state.count == 0
    memory_idx = state.count % m
    prev_memory_idx = (state.count - 1) % m
    g = tree_utils.cast_like(updates, state.updates)
    w = tree_utils.cast_like(params, state.params)

    # 1. The newest pair s, y and ρ = 1/⟨y, s⟩ (nothing before the first step).
    s = jax.tree.map(jnp.subtract, w, state.params)
    y = jax.tree.map(jnp.subtract, g, state.updates)
    ys = tree_utils.tree_vdot(y, s, dtype)
    rho = jnp.where(ys == 0.0, 0.0, 1.0 / ys)
    s, y, rho = jax.tree.map(lambda x: jnp.where(first, jnp.zeros_like(x), x), (s, y, rho))
    diff_params_memory, diff_updates_memory, weights_memory = jax.tree.map(
        lambda memory, x: memory.at[prev_memory_idx].set(x),
        (state.diff_params_memory, state.diff_updates_memory, state.weights_memory),
        (s, y, rho),
    )

    # 2. γ_k, the scale of the initial estimate.
    if scale_init_precond:
        yy = _sum_of_squares(y, dtype)
        gamma = jnp.where(yy > 0.0, tree_utils.tree_vdot(y, s, dtype) / yy, 1.0)
        g_norm = jnp.sqrt(_sum_of_squares(jax.lax.stop_gradient(g), dtype))
        gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / g_norm), gamma)
    else:
        gamma = jnp.ones([], dtype)

    # 3. H_k g by the two-loop recursion.
    direction = precondition_by_lbfgs(g, diff_params_memory, diff_updates_memory,
                                      weights_memory, gamma.astype(dtype), memory_idx)
    new_state = ScaleByLBFGSState(
        count=safe_increment(state.count), params=w, updates=g,
        diff_params_memory=diff_params_memory, diff_updates_memory=diff_updates_memory,
        weights_memory=weights_memory,
    )
    return tree_utils.cast_like(direction, updates), new_state


# Eager calls (a Python loop of updates) then compile the two scans once per structure.
_lbfgs_step = jax.jit(_lbfgs_update, static_argnums=(0, 1))
