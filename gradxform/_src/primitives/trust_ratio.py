"""Layer-wise step sizes: each leaf's update scaled by the norm of its parameters.

A leaf ("layer", "block") is a weight matrix, a bias vector, a convolution kernel: whatever
array the params hold. The norms here are Frobenius norms of whole leaves, ‖x‖ = √(Σ_i |x_i|²),
accumulated in float32 for 16-bit leaves. LARS and LAMB scale each leaf's step by the trust
ratio ‖θ‖ / ‖u‖, so that a step changes every layer by the same fraction of its size, whatever
the layers' gradient scales; Fromage then divides the weights by √(1 + η²), which keeps their
norms from growing step after step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.clipping import norm_dtype
from gradxform._src.primitives.scaling import CountState
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation, leaf_scalars
from gradxform._src.protocol.fields import constant, hyperparameter, non_negative
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    EmptyState,
    Transformation,
    require_params,
    safe_increment,
    zero_count,
)


def _block_norm(x, dtype):
    """‖x‖ = √(Σ_i |x_i|²) over the whole leaf, in the real precision `dtype`."""
    return jnp.sqrt(jnp.sum(abs_sq(tree_utils.widen(x, jnp.zeros((), dtype)))))


@pytree_dataclass(positional=3)
class scale_by_trust_ratio(Transformation):
    """Scales each leaf's update by its trust ratio, the parameter norm over the update norm.

        r = c ‖θ‖ / (‖u‖ + ε),    ‖x‖ = max(√(Σ_i |x_i|²), n_min)   (per leaf)
        u' = r u                  (u' = u where ‖θ‖ = 0 or ‖u‖ = 0)

    With n_min = 0 a zero-initialised leaf (a bias) or a zero update keeps its update unscaled,
    instead of never moving; n_min > 0 instead bounds both norms from below (Fromage: 1e-6).

    Args:
      min_norm: n_min ≥ 0, the smallest value the two norms are taken to have (0).
      trust_coefficient: c ≥ 0, a multiplier for the ratio (1; LARS uses 1e-3).
      eps: ε ≥ 0, added to the update norm in the denominator (0).

    Returns:
      A transformation; its state holds the step count. `update` needs params.

    References:
      You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017 (LARS,
      the local learning rate λ^l = η ‖w^l‖ / (‖∇L(w^l)‖ + β ‖w^l‖)).
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020 (LAMB, Algorithm 2: φ(‖x‖) / ‖r + λx‖ with φ the identity).
    """

    min_norm: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    trust_coefficient: ScalarOrSchedule = hyperparameter(1.0, check=non_negative)
    eps: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)

    def init(self, params):
        return CountState(count=zero_count())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "scale_by_trust_ratio")
        hp = self.at(state.count)
        lookup = leaf_scalars(dict(min_norm=hp.min_norm, c=hp.trust_coefficient, eps=hp.eps))

        def rescale(u, p):
            dt = norm_dtype(u)
            s = lookup(jnp.zeros((), dt))
            p_norm = jnp.maximum(_block_norm(p, dt), s.min_norm)    # max(‖θ‖, n_min)
            u_norm = jnp.maximum(_block_norm(u, dt), s.min_norm)    # max(‖u‖, n_min)
            ratio = s.c * p_norm / (u_norm + s.eps)                 # c ‖θ‖ / (‖u‖ + ε)
            ratio = jnp.where((p_norm == 0) | (u_norm == 0), jnp.ones((), dt), ratio)
            return (tree_utils.widen(u, ratio) * ratio).astype(u.dtype)

        updates = jax.tree.map(rescale, updates, params)
        return updates, CountState(count=safe_increment(state.count))


@pytree_dataclass
class scale_by_param_block_norm(Transformation):
    """Scales each leaf's update by the norm of that leaf's parameters.

        u' = max(‖θ‖, ε) u,    ‖θ‖ = √(Σ_i |θ_i|²)   (per leaf)

    The norm counterpart of `scale_by_param_block_rms`: a learning rate then means "move each
    block by this fraction of its norm"; ε keeps zero-initialised blocks moving.

    Args:
      min_scale: ε ≥ 0 (1e-3), a number or an array, not a schedule (the transformation keeps
        no step count to evaluate one at).

    Returns:
      A transformation with no state. `update` needs params.
    """

    min_scale: float = constant(1e-3, check=non_negative)

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "scale_by_param_block_norm")
        lookup = leaf_scalars(dict(eps=self.min_scale))

        def rescale(u, p):
            dt = norm_dtype(u)
            factor = jnp.maximum(_block_norm(p, dt), lookup(jnp.zeros((), dt)).eps)
            return (tree_utils.widen(u, factor) * factor).astype(u.dtype)   # max(‖θ‖, ε) u

        return jax.tree.map(rescale, updates, params), state


@pytree_dataclass
class scale_and_shrink(ElementwiseTransformation):
    """Fromage's step: a descent step of size η, then the weights divided by √(1 + η²).

        θ_t = (θ_{t-1} - η u) / √(1 + η²),   that is   u' = -η m u + (m - 1) θ_{t-1},
        m = 1 / √(1 + η²)

    After `scale_by_trust_ratio()` the step η u has norm η ‖θ‖ and, for a gradient orthogonal
    to θ, ‖θ - η u‖ = √(1 + η²) ‖θ‖: the division undoes that growth, which would otherwise
    shrink the relative step size over training.

    Args:
      learning_rate: η ≥ 0, a float, an array or a schedule of the step count.

    Returns:
      A transformation; its state holds the step count. `update` needs params.

    References:
      Bernstein, Vahdat, Yue & Liu, "On the distance between two neural networks and the
      stability of learning", NeurIPS 2020, Algorithm 1 (Fromage).
    """

    learning_rate: ScalarOrSchedule = hyperparameter(check=non_negative)

    state_type = CountState
    needs_params = True

    def step_scalars(self, hp, t):
        eta = hp.learning_rate
        m = 1 / (1 + eta**2) ** 0.5                      # 1 / √(1 + η²)
        return dict(step=-(eta * m), shrink=m - 1)

    def element(self, s, g, p=None):
        return s.step * g + s.shrink * p.astype(g.dtype), ()   # -η m u + (m - 1) θ
