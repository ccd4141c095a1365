"""MoMo: momentum steps truncated by a model of the loss (Polyak-type step sizes).

MoMo keeps EMAs of the loss values f̄, of the gradients m and of ⟨g_k, x_k⟩ (γ), which
together give a linear model of the loss around the iterates; the step along m is the one
that brings this model down to a lower bound f* of the loss (0 for most losses), capped at the
learning rate:

    τ_t = min(α_t, max((1 + α_t λ)(f̄_t - f* - γ_t) + ⟨m_t, x_t⟩, 0) / ‖m_t‖²)

so a user can set a large α and let the model shrink the steps. The loss value enters the
update as an extra argument: `update(grads, state, params, value=loss)`, each step, from
`jax.value_and_grad`. Each is one transformation, learning rate and sign included, as in optax.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.distance_estimation import tree_vdot
from gradxform._src.primitives.distance_over_gradients import scalar_state_dtype, squared_norm
from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import (
    constant,
    hyperparameter,
    in_interval,
    non_negative,
    static,
)
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation, require_params, safe_increment

_unit = in_interval(0, 1, "[)")
_TINY = float(jnp.finfo(float).eps)  # ‖m‖² at or below it: no step (optax's threshold)


def require_value(value, owner: str):
    if value is None:
        raise ValueError(
            f"{owner}.update: the loss value is required: pass it as "
            f"update(grads, state, params, value=loss), e.g. from jax.value_and_grad")
    return value


def momo_step(t1_num, norm, alpha, cap_scale):
    """τ = min(α / c, max(num, 0) / ‖m‖²), and 0 where ‖m‖² is tiny (c: 1 or 1 - β1^t)."""
    t1 = jnp.maximum(t1_num, 0) / norm
    t1 = jnp.where(norm <= _TINY, 0, t1)
    return jnp.minimum(alpha / cap_scale, t1)


class MomoState(NamedTuple):
    exp_avg: Any
    barf: Any
    gamma: Any
    lb: Any
    count: Any


@pytree_dataclass(positional=5)
class momo(Transformation):
    """MoMo: SGD with momentum and the model-truncated step size τ_t (Schaipp et al. 2024).

        β_t = 0 at the first step, β after it
        f̄_t = β_t f̄_{t-1} + (1 - β_t) f(x_t),   m_t = β_t m_{t-1} + (1 - β_t) g_t
        γ_t = β_t γ_{t-1} + (1 - β_t) ⟨g_t, x_t⟩
        τ_t = min(α_t, max((1 + α_t λ)(f̄_t - f* - γ_t) + ⟨m_t, x_t⟩, 0) / ‖m_t‖²)
        u_t = -α_t λ / (1 + α_t λ) x_t - τ_t m_t

    With `adapt_lower_bound`, f* is estimated online from the model (the paper's MoMo*),
    starting from `lower_bound`. Same numbers as optax's `contrib.momo`; its state is
    `MomoState` (scalars in the params' lowest precision, float32 for 16-bit params).

    Args:
      learning_rate: α ≥ 0, the largest step (may be a schedule).
      beta: β in [0, 1), the decay of the three EMAs.
      lower_bound: f*, a lower bound of the loss (0 for non-negative losses).
      weight_decay: λ ≥ 0, applied implicitly (the 1/(1 + αλ) factor).
      adapt_lower_bound: estimate f* online.

    References:
      Schaipp, Ohana, Eickenberg, Defazio & Gower, "MoMo: Momentum Models for Adaptive
      Learning Rates", ICML 2024 (arXiv:2305.07583), Algorithm 1.
    """

    learning_rate: ScalarOrSchedule = hyperparameter(1.0, check=non_negative)
    beta: float = hyperparameter(0.9, check=_unit)
    lower_bound: float = constant(0.0)
    weight_decay: float = hyperparameter(0.0, check=non_negative)
    adapt_lower_bound: bool = static(False)

    def init(self, params):
        dtype = scalar_state_dtype(params)
        return MomoState(tree_utils.zeros_like(params), jnp.zeros([], dtype),
                         jnp.zeros([], dtype), jnp.asarray(self.lower_bound, dtype),
                         jnp.zeros([], jnp.int32))

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        require_params(params, "momo", "the loss model is linear around them")
        value = require_value(value, "momo")
        h = self.at(state.count)
        dtype = jnp.result_type(state.barf)
        bt = jnp.where(state.count == 0, 0.0, h.beta).astype(dtype)
        barf = ema_step(state.barf, jnp.asarray(value, dtype), bt)              # f̄_t
        lookup = leaf_scalars(dict(bt=bt))
        m = jax.tree.map(lambda m, g: ema_step(m, tree_utils.widen(g, m), lookup(m).bt),
                         state.exp_avg, updates)                                # m_t
        gamma = ema_step(state.gamma, tree_vdot(updates, params, dtype), bt)    # γ_t
        norm = squared_norm(m).astype(dtype)
        iprod = tree_vdot(m, params, dtype)
        alpha, wd, lb0 = h.learning_rate, h.weight_decay, h.lower_bound
        decay = 1 + alpha * wd
        lb = state.lb
        if self.adapt_lower_bound:
            cap = decay * (barf - gamma) + iprod
            lb = jnp.where(cap < decay * state.lb, jnp.maximum(cap / (2 * decay), lb0), state.lb)
        tau = momo_step(decay * (barf - lb - gamma) + iprod, norm, alpha, 1)
        step = leaf_scalars(dict(shrink=alpha * wd / decay, tau=tau))
        u = jax.tree.map(lambda m, x, g: (-step(m).shrink * x.astype(m.dtype)
                                          - step(m).tau * m).astype(g.dtype), m, params, updates)
        if self.adapt_lower_bound:
            lb = jnp.maximum(barf + iprod - gamma - tau * norm / 2, lb0).astype(dtype)
        else:
            lb = state.lb
        return u, MomoState(m, barf, gamma, lb, safe_increment(state.count))


class MomoAdamState(NamedTuple):
    exp_avg: Any
    exp_avg_sq: Any
    barf: Any
    gamma: Any
    lb: Any
    count: Any


@pytree_dataclass(positional=7)
class momo_adam(Transformation):
    """MoMo-Adam: Adam's preconditioned momentum with the model-truncated step size.

        f̄_t, m_t, γ_t: EMAs with β1 (from zero, no first-step special case)
        v_t = β2 v_{t-1} + (1 - β2) g_t²,   D_t = ε + √(v_t / (1 - β2^t))
        ρ_t = 1 - β1^t
        τ_t = min(α_t / ρ_t,
                  max((1 + α_t λ)(f̄_t - ρ_t f* - γ_t) + ⟨m_t, x_t⟩, 0) / ⟨m_t, m_t / D_t⟩)
        u_t = -α_t λ / (1 + α_t λ) x_t - τ_t m_t / D_t

    Same numbers as optax's `contrib.momo_adam` (`adapt_lower_bound` as in `momo`); its state is
    `MomoAdamState`.

    Args:
      learning_rate: α ≥ 0 (may be a schedule).
      b1: β1 in [0, 1).
      b2: β2 in [0, 1).
      eps: ε ≥ 0, added to the root.
      lower_bound: f*.
      weight_decay: λ ≥ 0.
      adapt_lower_bound: estimate f* online.

    References:
      Schaipp, Ohana, Eickenberg, Defazio & Gower, "MoMo: Momentum Models for Adaptive
      Learning Rates", ICML 2024 (arXiv:2305.07583), Algorithm 3.
    """

    learning_rate: ScalarOrSchedule = hyperparameter(0.01, check=non_negative)
    b1: float = hyperparameter(0.9, check=_unit)
    b2: float = hyperparameter(0.999, check=_unit)
    eps: float = hyperparameter(1e-8, check=non_negative)
    lower_bound: float = constant(0.0)
    weight_decay: float = hyperparameter(0.0, check=non_negative)
    adapt_lower_bound: bool = static(False)

    def init(self, params):
        dtype = scalar_state_dtype(params)
        return MomoAdamState(tree_utils.zeros_like(params), tree_utils.real_zeros_like(params),
                             jnp.zeros([], dtype), jnp.zeros([], dtype),
                             jnp.asarray(self.lower_bound, dtype), jnp.zeros([], jnp.int32))

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        require_params(params, "momo_adam", "the loss model is linear around them")
        value = require_value(value, "momo_adam")
        h = self.at(state.count)
        dtype = jnp.result_type(state.barf)
        t = safe_increment(state.count)
        b1, b2 = h.b1, h.b2
        barf = ema_step(state.barf, jnp.asarray(value, dtype), b1)
        lookup = leaf_scalars(dict(b1=b1, b2=b2, eps=h.eps,
                                   bc2=(1 - b2 ** t.astype(dtype))))
        m = jax.tree.map(lambda m, g: ema_step(m, tree_utils.widen(g, m), lookup(m).b1),
                         state.exp_avg, updates)
        v = jax.tree.map(lambda v, g: ema_step(v, abs_sq(tree_utils.widen(g, v)), lookup(v).b2),
                         state.exp_avg_sq, updates)
        precond = jax.tree.map(lambda v: lookup(v).eps + jnp.sqrt(v / lookup(v).bc2), v)
        norm = tree_vdot(m, jax.tree.map(lambda m, d: m / d, m, precond), dtype)
        gamma = ema_step(state.gamma, tree_vdot(updates, params, dtype), b1)
        iprod = tree_vdot(m, params, dtype)
        alpha, wd, lb0 = h.learning_rate, h.weight_decay, h.lower_bound
        decay = 1 + alpha * wd
        bc1 = (1 - b1 ** t.astype(dtype))
        lb = state.lb
        if self.adapt_lower_bound:
            cap = decay * (barf - gamma) + iprod
            lb = jnp.where(cap < decay * bc1 * state.lb,
                           jnp.maximum(cap / (2 * bc1 * decay), lb0), state.lb)
        tau = momo_step(decay * (barf - bc1 * lb - gamma) + iprod, norm, alpha, bc1)
        step = leaf_scalars(dict(shrink=alpha * wd / decay, tau=tau))
        u = jax.tree.map(lambda m, d, x, g: (-step(m).shrink * x.astype(m.dtype)
                                             - step(m).tau * m / d).astype(g.dtype),
                         m, precond, params, updates)
        if self.adapt_lower_bound:
            lb = jnp.maximum((barf + iprod - gamma - tau * norm / 2) / bc1, lb0).astype(dtype)
        else:
            lb = state.lb
        return u, MomoAdamState(m, v, barf, gamma, lb, t)
