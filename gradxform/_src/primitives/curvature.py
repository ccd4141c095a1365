"""Sophia: a clipped diagonal Newton step, the Hessian refreshed every few steps (Liu et al. 2023).

Adam divides the momentum by √v, the size of recent gradients. Sophia divides it by the
curvature instead, an EMA h of estimates of the Hessian's diagonal: a coordinate in a flat
direction (small h) takes a large step, one in a sharp direction a small step — Newton's method
per coordinate. Where the estimate is tiny, stale or negative (non-convex regions), the ratio
is clipped, so no coordinate ever moves by more than η:

    θ ← θ - η · clip(m / max(γ h, ε), 1)

The estimate costs about one extra gradient, so it is refreshed only every k ≈ 10 steps. This
module holds the update (`scale_by_sophia`, `sophia`) and the two estimators of the paper
(`hutchinson_diagonal`, `gauss_newton_bartlett_diagonal`); the training step decides when to
refresh and passes the estimate in, `update(grads, state, params, hessian=estimate)`:

    def train_step(params, state, batch, key, step):
        loss = lambda p: loss_fn(p, batch)
        grads = jax.grad(loss)(params)
        refresh = lambda: opt.update(grads, state, params,
                                     hessian=hutchinson_diagonal(loss, params, key))
        keep = lambda: opt.update(grads, state, params)
        updates, state = jax.lax.cond(step % 10 == 0, refresh, keep)
        return gx.apply_updates(params, updates), state

(`lax.cond` runs only the branch taken, so the estimator costs nothing on the other steps.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars, map_leaves
from gradxform._src.protocol.fields import (
    check_argument,
    dtype_option,
    hyperparameter,
    in_interval,
    integer_at_least,
    positive,
    static,
)
from gradxform._src.protocol.runtime_errors import error_if
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    Params,
    Transformation,
    safe_increment,
    zero_count,
)

# -- estimators of the Hessian's diagonal --------------------------------------------------------


def _rademacher_like(key, params):
    """A tree of independent ±1 entries shaped like `params` (one subkey per leaf)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    signs = [
        jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)
    ]
    return jax.tree_util.tree_unflatten(treedef, signs)


def hutchinson_diagonal(fn: Callable[[Params], jax.Array], params: Params, key: jax.Array, *,
                        num_samples: int = 1) -> Params:
    """Hutchinson's unbiased estimate of the diagonal of the Hessian of `fn` at `params`.

        ĥ = u ⊙ (∇²f(θ) u),     u ~ Rademacher (each entry ±1 with probability ½)

    E[ĥ_i] = Σ_j H_ij E[u_i u_j] = H_ii, and Var[ĥ_i] = Σ_{j≠i} H_ij²: exact in one sample when
    the Hessian is diagonal (a separable loss), noisy when coordinates are coupled. The
    Hessian-vector product H u is the forward-mode derivative of the gradient along u
    (`jax.jvp` of `jax.grad`), one gradient's cost, without forming H.

    Args:
      fn: the loss as a function of the params alone (close over the batch), returning a
        scalar.
      params: where to estimate.
      key: a `jax.random` key; the caller splits a fresh one for every refresh.
      num_samples: average this many independent estimates.

    Returns:
      A tree shaped like `params`.

    References:
      Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
      smoothing splines", 1990.
      Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
      Pre-training", ICLR 2024, Algorithm 1 ("Sophia-H").
    """
    check_argument("hutchinson_diagonal", "num_samples", num_samples, integer_at_least(1))

    def one(k):
        u = _rademacher_like(k, params)
        hvp = jax.jvp(jax.grad(fn), (params,), (u,))[1]
        return jax.tree.map(lambda ui, hu: ui * hu, u, hvp)

    if num_samples == 1:
        return one(key)
    samples = jax.vmap(one)(jax.random.split(key, num_samples))
    return jax.tree.map(lambda s: jnp.mean(s, axis=0), samples)


def gauss_newton_bartlett_diagonal(logits_fn: Callable[[Params], jax.Array], params: Params,
                                   key: jax.Array) -> Params:
    """The Gauss-Newton-Bartlett estimate of the Gauss-Newton diagonal for softmax cross-entropy.

        ŷ_b ~ softmax(f(θ, x_b))                         (labels sampled from the model)
        L̂(θ) = (1/B) Σ_b CE(f(θ, x_b), ŷ_b)
        ĥ = B · ∇L̂(θ) ⊙ ∇L̂(θ)

    With labels drawn from the model's own distribution, E[∇CE ∇CEᵀ] is the Gauss-Newton
    matrix Jᵀ (diag(p) - p pᵀ) J of one example (Bartlett's identity), so ĥ estimates the
    diagonal of the Gauss-Newton matrix of the mean loss — positive semi-definite, unlike the
    Hessian, and the paper's preferred estimator for language models. It needs one forward and
    one backward pass and no labels.

    Args:
      logits_fn: the model as a function of the params alone (close over the inputs), returning
        logits of shape (..., num_classes). Every leading position (example, or token of a
        sequence) is one of the B predictions.
      params: where to estimate.
      key: a `jax.random` key for sampling ŷ.

    Returns:
      A tree shaped like `params`.

    References:
      Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
      Pre-training", ICLR 2024, Algorithm 2 ("Sophia-G").
    """
    logits, pullback = jax.vjp(logits_fn, params)
    wide = logits.astype(tree_utils.moment_dtype(logits))  # float32 for 16-bit logits
    y = jax.random.categorical(key, wide)
    batch = logits.size // logits.shape[-1]
    # ∂L̂/∂logits = (softmax(logits) - onehot(ŷ)) / B
    residual = (jax.nn.softmax(wide) - jax.nn.one_hot(y, logits.shape[-1], dtype=wide.dtype))
    (grads,) = pullback((residual / batch).astype(logits.dtype))
    return jax.tree.map(lambda g: batch * (g * g), grads)


# -- the update -----------------------------------------------------------------------------------



class SophiaState(NamedTuple):
    count: Any
    mu: Any  # m, the EMA of gradients
    hessian: Any  # h, the EMA of the diagonal Hessian estimates
    estimates: Any  # how many estimates ĥ have been passed (int32, saturating)


def _positive_or_none(x):
    return None if x > 0 else "> 0 (or None for no clipping)"


_MISSING_ESTIMATE = (
    "scale_by_sophia.update: no Hessian estimate has been passed in the first two updates. "
    "Without one the curvature h stays 0 and every coordinate steps by ±ρ (clipped sign "
    "momentum, not Sophia). Pass it on refresh steps, update(grads, state, params, "
    "hessian=hutchinson_diagonal(loss, params, key)) (or gauss_newton_bartlett_diagonal), "
    "e.g. every 10 steps starting with the first, and omit it on the others (see the "
    "docstring of gradxform.scale_by_sophia)"
)


@pytree_dataclass
class scale_by_sophia(Transformation):
    """Sophia's direction: momentum over clipped curvature.

        m_t = β1 m_{t-1} + (1 - β1) g_t
        h_t = β2 h_{t-1} + (1 - β2) ĥ_t     on a refresh step (update(..., hessian=ĥ_t)),
        h_t = h_{t-1}                        otherwise
        u_t = clip(m̂_t / max(γ h_t, ε), ρ),  m̂_t = m_t / (1 - β1^t)

    clip(z, ρ) = max(min(z, ρ), -ρ) bounds every coordinate's step by ρ (and, after
    `scale_by_learning_rate`, by η ρ). Where h is small or negative the step is ±ρ: signSGD with
    momentum, as on a first step taken before the first estimate (optax's order).

    Conventions: optax's `contrib.scale_by_sophia` (and Levanter) bias-correct m (`debias=True`,
    the default here); the paper's Algorithm 3 and its reference code do not (`debias=False`).
    The paper refreshes h before taking the step of the same iteration, and so does this
    transform: the estimate passed to an update is used by that update. optax (Levanter)
    computes the estimate after the step and uses it from the next step on; passing the
    estimate computed at the previous step's params reproduces that order.

    Args:
      b1: β1 in [0, 1) (0.965).
      b2: β2 in [0, 1) (0.99), applied once per refresh: with a refresh every k steps h
        forgets like an EMA of decay 1 - (1 - β2)/k per step.
      eps: ε > 0, the floor of the denominator.
      gamma: γ > 0, scales the curvature (0.01; the paper's ρ in its first version). A larger γ
        gives smaller unclipped steps; tune it so that 10-50% of coordinates are not clipped.
      clip_threshold: ρ > 0, or None for no clipping (1).
      mu_dtype: dtype of m (default: the params' dtype, float32 for 16-bit params).
      debias: bias-correct m.

    Extra arguments of `update`:
      hessian: ĥ_t, a tree shaped like the updates (e.g. from `hutchinson_diagonal` or
        `gauss_newton_bartlett_diagonal`), on refresh steps; omit it on the others. The first
        estimate must come with the first or the second update (optax's order uses the
        estimate of step t from step t + 1): an update without one after that, while none has
        ever been passed, raises a ValueError (under jit, a `JaxRuntimeError` with the same
        message when the step runs). Without estimates h stays 0 and every coordinate would
        step by ±ρ: clipped sign momentum, not Sophia.

    References:
      Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
      Pre-training", ICLR 2024, Algorithm 3.
    """

    b1: ScalarOrSchedule = hyperparameter(0.965, check=in_interval(0, 1, "[)"))
    b2: ScalarOrSchedule = hyperparameter(0.99, check=in_interval(0, 1, "[)"))
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=positive)
    gamma: ScalarOrSchedule = hyperparameter(0.01, check=positive)
    clip_threshold: ScalarOrSchedule | None = hyperparameter(1.0, check=_positive_or_none)
    mu_dtype: DTypeLike | None = static(None, check=dtype_option)
    debias: bool = static(True)

    def init(self, params):
        return SophiaState(
            count=zero_count(),
            mu=tree_utils.zeros_like(params, self.mu_dtype),
            hessian=tree_utils.zeros_like(params),
            estimates=zero_count(),
        )

    # Not an ElementwiseTransformation: a refresh step reads a second tree, the estimate ĥ_t
    # passed to `update`, and whether it is passed decides the equation of h when tracing.
    def update(self, updates, state, params=None, *, hessian=None, **extra_args):
        hp = self.at(state.count)
        t = safe_increment(state.count)
        lookup = leaf_scalars(dict(
            b1=hp.b1, b2=hp.b2, eps=hp.eps, gamma=hp.gamma, rho=hp.clip_threshold,
            c1=1 / one_minus_power(hp.b1, t) if self.debias else None))
        trees = (updates, state.mu, state.hessian)
        if hessian is not None:
            tree_utils.check_same_structure(updates, hessian, "scale_by_sophia.update", "updates",
                                            "hessian")
            trees = (*trees, hessian)
            estimates = safe_increment(state.estimates)
        else:
            error_if((state.count >= 1) & (state.estimates == 0), _MISSING_ESTIMATE)
            estimates = state.estimates

        def step(g, m_stored, h, h_hat=None):
            m = tree_utils.in_update_precision(m_stored, g)
            m = ema_step(m, tree_utils.widen(g, m), lookup(m).b1)  # β1 m_{t-1} + (1 - β1) g_t
            m_hat = m * lookup(m).c1 if self.debias else m          # m_t / (1 - β1^t)
            s = lookup(h)
            if h_hat is not None:                                   # β2 h_{t-1} + (1 - β2) ĥ_t
                h = ema_step(h, h_hat.astype(h.dtype), s.b2)
            z = m_hat / jnp.maximum(s.gamma * h, s.eps).astype(m_hat.dtype)
            if hp.clip_threshold is not None:                       # clip(z, ρ)
                rho = lookup(z).rho
                z = jnp.clip(z, -rho, rho)
            return z.astype(g.dtype), m.astype(m_stored.dtype), h

        updates, mu, h = map_leaves(step, *trees, num_outputs=3)
        return updates, SophiaState(count=t, mu=mu, hessian=h, estimates=estimates)
