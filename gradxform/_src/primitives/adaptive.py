"""Per-coordinate scaling by accumulated squared gradients: AdaGrad, RMSProp, centered RMSProp.

Where ε goes differs between libraries, and both forms are offered:
- inside the square root, g / √(s + ε): optax's default (`eps_in_sqrt=True`);
- outside, g / (√s + ε): torch.optim and most textbooks (`eps_in_sqrt=False`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import zero_count


def abs_sq(g: jax.Array) -> jax.Array:
    """|g|², real for complex g (so Adam-family methods work on complex params, as in optax)."""
    if jnp.iscomplexobj(g):
        return (g.conj() * g).real
    return g * g


def _inv_root(s, eps, eps_in_sqrt: bool):
    """1/√(s + ε) or 1/(√s + ε), with ε in the precision of s."""
    if eps_in_sqrt:
        return jax.lax.rsqrt(s + eps)
    return 1 / (jnp.sqrt(s) + eps)


def _full_like(params, value):
    """Accumulators holding `value`, real (|g|² sums) even for complex params."""
    return jax.tree.map(lambda p: jnp.full_like(p, value, dtype=real_moment_dtype(p)), params)


class ScaleByRssState(NamedTuple):
    count: Any
    sum_of_squares: Any


@pytree_dataclass(positional=2)
class scale_by_rss(ElementwiseTransformation):
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

    initial_accumulator_value: ScalarOrSchedule = hyperparameter(0.1, check=non_negative)
    eps: ScalarOrSchedule = hyperparameter(1e-7, check=non_negative)
    eps_in_sqrt: bool = static(True)

    state_type = ScaleByRssState

    def init_buffers(self, params):
        return (_full_like(params, self.at(zero_count()).initial_accumulator_value),)

    def step_scalars(self, hp, t):
        return dict(eps=hp.eps)

    def element(self, s, g, G):
        G = abs_sq(g) + G                                # G_t = G_{t-1} + g_t²
        if self.eps_in_sqrt:                             # G = 0 (not yet updated): u = 0
            scaling = jnp.where(G > 0, jax.lax.rsqrt(G + s.eps), 0.0)
        else:
            scaling = _inv_root(G, s.eps, False)
        return scaling * g, (G,)                         # u_t = g_t / √(G_t + ε)


def real_moment_dtype(p: ArrayLike, dtype=None) -> jnp.dtype:
    """The dtype of a moment of |g|² for a leaf like `p`: `moment_dtype`, real for complex p."""
    dt = tree_utils.moment_dtype(p, dtype)
    return jnp.finfo(dt).dtype if jnp.issubdtype(dt, jnp.complexfloating) else dt


class ScaleByRmsState(NamedTuple):
    count: Any
    nu: Any


@pytree_dataclass(positional=5)
class scale_by_rms(ElementwiseTransformation):
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

    decay: ScalarOrSchedule = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    initial_scale: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    eps_in_sqrt: bool = static(True)
    bias_correction: bool = static(False)

    state_type = ScaleByRmsState

    def init_buffers(self, params):
        return (_full_like(params, self.at(zero_count()).initial_scale),)

    def step_scalars(self, hp, t):
        c = 1 / one_minus_power(hp.decay, t) if self.bias_correction else None
        return dict(decay=hp.decay, eps=hp.eps, c=c)

    def element(self, s, g, nu):
        nu = ema_step(nu, abs_sq(g), s.decay)            # s_t = ρ s_{t-1} + (1 - ρ) g_t²
        nu_hat = nu * s.c if self.bias_correction else nu   # ŝ_t = s_t / (1 - ρ^t)
        return g * _inv_root(nu_hat, s.eps, self.eps_in_sqrt), (nu,)


class ScaleByStddevState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


@pytree_dataclass(positional=5)
class scale_by_stddev(ElementwiseTransformation):
    """Centered RMSProp: scale by the root of an EMA estimate of the gradient's variance.

        m_t = ρ m_{t-1} + (1 - ρ) g_t,     s_t = ρ s_{t-1} + (1 - ρ) g_t²
        u_t = g_t / √(s_t - m_t² + ε)   (eps_in_sqrt=True)   or   g_t / (√(s_t - m_t²) + ε)

    Args: as `scale_by_rms`; with `bias_correction=True` both m and s are debiased.

    References:
      Graves, "Generating Sequences With Recurrent Neural Networks", 2013, eq. (38)-(41).
    """

    decay: ScalarOrSchedule = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    initial_scale: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    eps_in_sqrt: bool = static(True)
    bias_correction: bool = static(False)

    state_type = ScaleByStddevState

    def init_buffers(self, params):
        nu = _full_like(params, self.at(zero_count()).initial_scale)
        return tree_utils.zeros_like(params), nu

    def step_scalars(self, hp, t):
        c = 1 / one_minus_power(hp.decay, t) if self.bias_correction else None
        return dict(decay=hp.decay, eps=hp.eps, c=c)

    def element(self, s, g, m, nu):
        m = ema_step(m, g, s.decay)                      # m_t = ρ m_{t-1} + (1 - ρ) g_t
        nu = ema_step(nu, abs_sq(g), s.decay)            # s_t = ρ s_{t-1} + (1 - ρ) g_t²
        m_hat, nu_hat = (m * s.c, nu * s.c) if self.bias_correction else (m, nu)
        return g * _inv_root(nu_hat - abs_sq(m_hat), s.eps, self.eps_in_sqrt), (m, nu)
