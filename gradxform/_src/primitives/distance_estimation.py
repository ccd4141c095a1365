"""Adam whose learning rate is estimated on the fly: D-Adaptation (AdamW form) and Prodigy.

Both keep Adam's moments and an estimate d_t of D = ‖x_0 - x*‖, the distance to a solution,
which sets the step size: d_t only grows, from a tiny d_0, to the largest lower bound on D that
the gradients seen so far prove,

    d̂_t = r_t / ‖s_t‖_1,   d_{t+1} = max(d_t, d̂_t),

where s_t is a weighted sum of the gradients and r_t a weighted sum of ⟨g_k, ·⟩ products
(D-Adaptation: with the sums themselves; Prodigy: with the distance x_0 - x_k travelled). The
learning rate given is a multiplier of the estimated one (1: none; a schedule for warmup and
decay). Each is one transformation, learning rate and sign included, as in optax.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.distance_over_gradients import copy_params, scalar_state_dtype
from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import constant, hyperparameter, non_negative, positive, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    Transformation,
    require_params,
    safe_increment,
)


def _check_betas(owner: str, betas, names=("b1", "b2")) -> None:
    if not (isinstance(betas, tuple | list) and len(betas) == 2):
        raise ValueError(f"{owner}: betas must be a pair ({', '.join(names)}), got {betas!r}")
    for name, b in zip(names, betas):
        if isinstance(b, int | float) and not 0 <= b < 1:
            raise ValueError(f"{owner}: betas[{names.index(name)}] ({name}) must be in [0, 1), "
                             f"got {b!r}")


def tree_vdot(a, b, dtype) -> jax.Array:
    """Σ_leaves ⟨a, b⟩ (real parts), accumulated in `dtype`."""
    total = jnp.zeros([], dtype)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        wide = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
        if not (jnp.iscomplexobj(x) or jnp.iscomplexobj(y)):
            wide = dtype
        total = total + jnp.sum((jnp.conj(x.astype(wide)) * y.astype(wide)).real)
    return total


def tree_l1(tree, dtype) -> jax.Array:
    total = jnp.zeros([], dtype)
    for x in jax.tree_util.tree_leaves(tree):
        total = total + jnp.sum(jnp.abs(x).astype(dtype))
    return total


def adam_bias_correction(b1, b2, t):
    """√(1 - β2^t) / (1 - β1^t): Adam's two corrections folded into its step size."""
    return jnp.sqrt(one_minus_power(b2, t)) / one_minus_power(b1, t)


class DAdaptAdamWState(NamedTuple):
    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    estim_lr: Any
    numerator_weighted: Any
    count: Any


@pytree_dataclass(positional=5)
class dadapt_adamw(Transformation):
    """AdamW with D-Adaptation's estimate of the learning rate (Defazio & Mishchenko 2023).

        λ_t = γ_t d_t √(1 - β2^t) / (1 - β1^t)            (γ_t the learning rate given)
        r_t = √β2 r_{t-1} + (1 - √β2) λ_t ⟨g_t, s_{t-1} / (√v_{t-1} + ε)⟩
        m_t = β1 m_{t-1} + (1 - β1) λ_t g_t,   v_t = β2 v_{t-1} + (1 - β2) g_t²
        s_t = √β2 s_{t-1} + (1 - √β2) λ_t g_t
        d_{t+1} = max(d_t, r_t / ((1 - √β2) ‖s_t‖_1))
        u_t = -λ_t λ_wd x_t - m_t / (√v_t + ε)

    The momentum m_t already carries the step size λ_t (the paper's Algorithm 4). d_0 is
    `estim_lr0`. Same numbers as optax's `contrib.dadapt_adamw`; its state is
    `DAdaptAdamWState`, with the scalars in the params' lowest precision (float32 for 16-bit
    params). Extra arguments to `update` are ignored.

    Args:
      learning_rate: γ ≥ 0, a multiplier of the estimated step size (may be a schedule).
      betas: (β1, β2), each in [0, 1).
      eps: ε ≥ 0, added to √v.
      estim_lr0: d_0 > 0, the initial estimate of the distance to the solution.
      weight_decay: λ_wd ≥ 0, decoupled, multiplied by λ_t.

    References:
      Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023
      (arXiv:2301.07733), Algorithm 4.
    """

    learning_rate: ScalarOrSchedule = hyperparameter(1.0, check=non_negative)
    betas: tuple = constant((0.9, 0.999))
    eps: float = hyperparameter(1e-8, check=non_negative)
    estim_lr0: float = constant(1e-6, check=positive)
    weight_decay: float = hyperparameter(0.0, check=non_negative)

    def _validate(self) -> None:
        _check_betas("dadapt_adamw", self.betas)

    def init(self, params):
        dtype = scalar_state_dtype(params)
        return DAdaptAdamWState(
            tree_utils.zeros_like(params), tree_utils.real_zeros_like(params),
            tree_utils.zeros_like(params), jnp.asarray(self.estim_lr0, dtype),
            jnp.zeros([], dtype), jnp.zeros([], jnp.int32))

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "dadapt_adamw", "weight decay is applied to them")
        h = self.at(state.count)
        b1, b2 = h.betas
        sb2 = b2 ** 0.5
        t = safe_increment(state.count)
        dtype = jnp.result_type(state.estim_lr)
        dlr = (state.estim_lr * h.learning_rate * adam_bias_correction(b1, b2, t)).astype(dtype)
        lookup = leaf_scalars(dict(b1=b1, b2=b2, sb2=sb2, eps=h.eps, dlr=dlr,
                                   wd=h.weight_decay))
        s_weighted = jax.tree.map(lambda s, v: s / (jnp.sqrt(v) + lookup(s).eps),
                                  state.grad_sum, state.exp_avg_sq)
        numerator_acum = tree_vdot(updates, s_weighted, dtype)
        wide = lambda g, m: tree_utils.widen(g, m)  # noqa: E731  (16-bit g, float32 moments)
        m = jax.tree.map(lambda m, g: ema_step(m, lookup(m).dlr * wide(g, m), lookup(m).b1),
                         state.exp_avg, updates)
        v = jax.tree.map(lambda v, g: ema_step(v, abs_sq(wide(g, v)), lookup(v).b2),
                         state.exp_avg_sq, updates)
        s = jax.tree.map(lambda s, g: ema_step(s, lookup(s).dlr * wide(g, s), lookup(s).sb2),
                         state.grad_sum, updates)
        r = sb2 * state.numerator_weighted + (1 - sb2) * dlr * numerator_acum
        d = jnp.maximum(state.estim_lr, r / ((1 - sb2) * tree_l1(s, dtype)))
        u = jax.tree.map(
            lambda m, v, x, g: (-lookup(m).wd * lookup(m).dlr * x.astype(m.dtype)
                                - m / (jnp.sqrt(v) + lookup(m).eps)).astype(g.dtype),
            m, v, params, updates)
        return u, DAdaptAdamWState(m, v, s, d, r, t)


class ProdigyState(NamedTuple):
    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    params0: Any
    estim_lr: Any
    numerator_weighted: Any
    count: Any


@pytree_dataclass(positional=8)
class prodigy(Transformation):
    """Prodigy: Adam with a D-Adaptation estimate d_t driven by the distance travelled.

        λ_t = γ_t d_t √(1 - β2^t) / (1 - β1^t)
        m_t = β1 m_{t-1} + (1 - β1) d_t g_t,   v_t = β2 v_{t-1} + (1 - β2) d_t² g_t²
        s_t = β3 s_{t-1} + (d_t / d_0) λ_t g_t         (safeguard_warmup: d_t in place of λ_t)
        r_t = β3 r_{t-1} + (d_t / d_0) λ_t ⟨g_t, x_0 - x_t⟩
        d_{t+1} = max(d_t, c r_t / ‖s_t‖_1)
        u_t = -λ_t λ_wd x_t - λ_t m_t / (√v_t + d_{t+1} ε)

    The gradients enter weighted by d_t, so that the estimate does not lag behind its own
    growth (the paper's improvement over D-Adaptation). β3 = √β2 when None; c is
    `estim_lr_coef`; d_0 is `estim_lr0`. Same numbers as optax's `contrib.prodigy`; its state
    is `ProdigyState` (scalars in the params' lowest precision, float32 for 16-bit params).
    Extra arguments to `update` are ignored.

    Args:
      learning_rate: γ ≥ 0, a multiplier of the estimated step size (may be a schedule).
      betas: (β1, β2), each in [0, 1).
      beta3: β3 in [0, 1), or None for √β2.
      eps: ε ≥ 0, multiplied by d_{t+1} and added to √v.
      estim_lr0: d_0 > 0.
      estim_lr_coef: c > 0, multiplies the estimate.
      weight_decay: λ_wd ≥ 0, decoupled, multiplied by λ_t.
      safeguard_warmup: weight s_t by d_t rather than λ_t (the paper's safeguard for
        learning-rate warmup, which keeps a small γ_t from shrinking ‖s_t‖_1 and so
        inflating d).

    References:
      Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
      ICML 2024 (arXiv:2306.06101), Algorithm 3.
    """

    learning_rate: ScalarOrSchedule = hyperparameter(1.0, check=non_negative)
    betas: tuple = constant((0.9, 0.999))
    beta3: float | None = constant(None)
    eps: float = hyperparameter(1e-8, check=non_negative)
    estim_lr0: float = constant(1e-6, check=positive)
    estim_lr_coef: float = hyperparameter(1.0, check=positive)
    weight_decay: float = hyperparameter(0.0, check=non_negative)
    safeguard_warmup: bool = static(False)

    def _validate(self) -> None:
        _check_betas("prodigy", self.betas)
        b3 = self.beta3
        if isinstance(b3, int | float) and not 0 <= b3 < 1:
            raise ValueError(f"prodigy: beta3 must be in [0, 1) or None, got {b3!r}")

    def init(self, params):
        dtype = scalar_state_dtype(params)
        return ProdigyState(
            tree_utils.zeros_like(params), tree_utils.real_zeros_like(params),
            tree_utils.zeros_like(params), copy_params(params),
            jnp.asarray(self.estim_lr0, dtype), jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "prodigy", "the distance from x_0 is measured at them")
        h = self.at(state.count)
        b1, b2 = h.betas
        b3 = b2 ** 0.5 if h.beta3 is None else h.beta3
        t = safe_increment(state.count)
        d, d0 = state.estim_lr, h.estim_lr0
        dtype = jnp.result_type(d)
        dlr = (d * h.learning_rate * adam_bias_correction(b1, b2, t)).astype(dtype)
        lookup = leaf_scalars(dict(b1=b1, b2=b2, b3=b3, d=d, dlr=dlr, eps=h.eps,
                                   wd=h.weight_decay,
                                   w=(d if self.safeguard_warmup else dlr) / d0))
        dg = jax.tree.map(lambda g, m: lookup(m).d * tree_utils.widen(g, m), updates,
                          state.exp_avg)                                       # d_t g_t
        numerator_acum = tree_vdot(updates, jax.tree.map(lambda a, b: a - b,
                                                         state.params0, params), dtype)
        m = jax.tree.map(lambda m, x: ema_step(m, x, lookup(m).b1), state.exp_avg, dg)
        v = jax.tree.map(lambda v, x: ema_step(v, abs_sq(x), lookup(v).b2), state.exp_avg_sq, dg)
        s = jax.tree.map(lambda s, x: lookup(s).b3 * s + lookup(s).w * x, state.grad_sum, dg)
        r = b3 * state.numerator_weighted + d / d0 * dlr * numerator_acum
        d_new = jnp.maximum(d, h.estim_lr_coef * r / tree_l1(s, dtype))
        lookup_new = leaf_scalars(dict(d_eps=d_new * h.eps))
        u = jax.tree.map(
            lambda m, v, x, g: (-lookup(m).wd * lookup(m).dlr * x.astype(m.dtype)
                                - lookup(m).dlr * m / (jnp.sqrt(v) + lookup_new(v).d_eps)
                                ).astype(g.dtype),
            m, v, params, updates)
        return u, ProdigyState(m, v, s, state.params0, d_new, r, t)
