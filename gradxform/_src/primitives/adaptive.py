"""Per-coordinate scaling by accumulated squared gradients: AdaGrad, RMSProp, centered RMSProp.

Where ε goes differs between libraries, and both forms are offered:
- inside the square root, g / √(s + ε): optax's default (`eps_in_sqrt=True`);
- outside, g / (√s + ε): torch.optim and most textbooks (`eps_in_sqrt=False`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.moments import bias_correction
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative, static
from gradxform._src.protocol.transformation import Transformation, safe_increment, zero_count


def abs_sq(g):
    """|g|², real for complex g (so Adam-family methods work on complex params, as in optax)."""
    if jnp.iscomplexobj(g):
        return (g.conj() * g).real
    return g * g


def _inv_root(s, eps, eps_in_sqrt: bool):
    """1/√(s + ε) or 1/(√s + ε)."""
    if eps_in_sqrt:
        return jax.lax.rsqrt(s + tree_utils.coef(eps, s))
    return 1 / (jnp.sqrt(s) + tree_utils.coef(eps, s))


class ScaleByRssState(NamedTuple):
    count: Any
    sum_of_squares: Any


@pytree_dataclass
class scale_by_rss(Transformation):
    """AdaGrad: scale by the root of the sum of all squared gradients so far.

    (A schedule given for `initial_accumulator_value` is read at step 0, by `init`.)

        G_t = G_{t-1} + g_t²,     u_t = g_t / √(G_t + ε)     (eps_in_sqrt=True, optax)
                                  u_t = g_t / (√G_t + ε)     (eps_in_sqrt=False, torch)

    With ε inside the root a coordinate whose G is still 0 gets update 0, as in optax.

    Args:
      initial_accumulator_value: G_0 ≥ 0 (optax 0.1; torch 0).
      eps: ε ≥ 0 (optax 1e-7; torch 1e-10).
      eps_in_sqrt: where ε goes.

    References:
      Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization", JMLR 2011.
    """

    initial_accumulator_value: float = hyperparameter(0.1, check=non_negative)
    eps: float = hyperparameter(1e-7, check=non_negative)
    eps_in_sqrt: bool = static(True)

    def init(self, params):
        return ScaleByRssState(
            count=zero_count(),
            sum_of_squares=jax.tree.map(
                lambda p: jnp.full_like(
                    p, self.at(zero_count()).initial_accumulator_value,
                    dtype=real_moment_dtype(p),
                ),
                params,
            ),
        )

    def update(self, updates, state, params=None, **extra_args):
        eps = self.at(state.count).eps
        G = jax.tree.map(lambda g, G: abs_sq(tree_utils.widen(g, G)) + G, updates,
                         state.sum_of_squares)
        if self.eps_in_sqrt:
            scaling = jax.tree.map(
                lambda G: jnp.where(G > 0, jax.lax.rsqrt(G + tree_utils.coef(eps, G)), 0.0), G
            )
        else:
            scaling = jax.tree.map(lambda G: _inv_root(G, eps, False), G)
        updates = jax.tree.map(
            lambda s, g: (s * tree_utils.widen(g, s)).astype(g.dtype), scaling, updates
        )
        return updates, ScaleByRssState(count=safe_increment(state.count), sum_of_squares=G)


def real_moment_dtype(p, dtype=None):
    dt = tree_utils.moment_dtype(p, dtype)
    return jnp.finfo(dt).dtype if jnp.issubdtype(dt, jnp.complexfloating) else dt


class ScaleByRmsState(NamedTuple):
    count: Any
    nu: Any


@pytree_dataclass
class scale_by_rms(Transformation):
    """RMSProp: scale by the root of an EMA of squared gradients.

        s_t = ρ s_{t-1} + (1 - ρ) g_t²
        u_t = g_t / √(ŝ_t + ε)   (eps_in_sqrt=True, optax)   or   g_t / (√ŝ_t + ε)   (torch)

    where ŝ_t = s_t / (1 - ρ^t) with `bias_correction=True`, else s_t.

    Args:
      decay: ρ in [0, 1) (optax 0.9; torch's `alpha`, 0.99).
      eps: ε ≥ 0.
      initial_scale: s_0 ≥ 0.
      eps_in_sqrt: where ε goes.
      bias_correction: debias s_t as Adam does.

    References:
      Tieleman & Hinton, Lecture 6.5 "rmsprop", COURSERA: Neural Networks for Machine
      Learning, 2012.
    """

    decay: float = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    eps: float = hyperparameter(1e-8, check=non_negative)
    initial_scale: float = hyperparameter(0.0, check=non_negative)
    eps_in_sqrt: bool = static(True)
    bias_correction: bool = static(False)

    def init(self, params):
        return ScaleByRmsState(
            count=zero_count(),
            nu=jax.tree.map(
                lambda p: jnp.full_like(
                    p, self.at(zero_count()).initial_scale, dtype=real_moment_dtype(p)
                ),
                params,
            ),
        )

    def update(self, updates, state, params=None, **extra_args):
        h = self.at(state.count)
        nu = jax.tree.map(
            lambda g, s: (
                (1 - tree_utils.coef(h.decay, s)) * abs_sq(tree_utils.widen(g, s))
                + tree_utils.coef(h.decay, s) * s
            ),
            updates,
            state.nu,
        )
        count = safe_increment(state.count)
        nu_hat = bias_correction(nu, h.decay, count) if self.bias_correction else nu
        updates = jax.tree.map(
            lambda g, s: (tree_utils.widen(g, s) * _inv_root(s, h.eps, self.eps_in_sqrt)).astype(
                g.dtype
            ),
            updates,
            nu_hat,
        )
        return updates, ScaleByRmsState(count=count, nu=nu)


class ScaleByStddevState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


@pytree_dataclass
class scale_by_stddev(Transformation):
    """Centered RMSProp: scale by the root of an EMA estimate of the gradient's variance.

        m_t = ρ m_{t-1} + (1 - ρ) g_t,     s_t = ρ s_{t-1} + (1 - ρ) g_t²
        u_t = g_t / √(s_t - m_t² + ε)   (eps_in_sqrt=True)   or   g_t / (√(s_t - m_t²) + ε)

    Args: as `scale_by_rms`; with `bias_correction=True` both m and s are debiased.

    References:
      Graves, "Generating Sequences With Recurrent Neural Networks", 2013, eq. (38)-(41).
    """

    decay: float = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    eps: float = hyperparameter(1e-8, check=non_negative)
    initial_scale: float = hyperparameter(0.0, check=non_negative)
    eps_in_sqrt: bool = static(True)
    bias_correction: bool = static(False)

    def init(self, params):
        return ScaleByStddevState(
            count=zero_count(),
            mu=tree_utils.zeros_like(params),
            nu=jax.tree.map(
                lambda p: jnp.full_like(
                    p, self.at(zero_count()).initial_scale, dtype=real_moment_dtype(p)
                ),
                params,
            ),
        )

    def update(self, updates, state, params=None, **extra_args):
        h = self.at(state.count)
        mu = jax.tree.map(
            lambda g, m: (
                (1 - tree_utils.coef(h.decay, m)) * tree_utils.widen(g, m)
                + tree_utils.coef(h.decay, m) * m
            ),
            updates,
            state.mu,
        )
        nu = jax.tree.map(
            lambda g, s: (
                (1 - tree_utils.coef(h.decay, s)) * abs_sq(tree_utils.widen(g, s))
                + tree_utils.coef(h.decay, s) * s
            ),
            updates,
            state.nu,
        )
        count = safe_increment(state.count)
        if self.bias_correction:
            mu_hat, nu_hat = (
                bias_correction(mu, h.decay, count),
                bias_correction(nu, h.decay, count),
            )
        else:
            mu_hat, nu_hat = mu, nu
        updates = jax.tree.map(
            lambda g, m, s: (
                tree_utils.widen(g, s) * _inv_root(s - abs_sq(m), h.eps, self.eps_in_sqrt)
            ).astype(g.dtype),
            updates,
            mu_hat,
            nu_hat,
        )
        return updates, ScaleByStddevState(count=count, mu=mu, nu=nu)
