"""Distance over gradients (DoG): a step size set by how far the params have travelled.

DoG needs no learning rate: the step size at step t is the largest distance the params have
moved from where they started, over the root of the sum of squared gradient norms so far,

    η_t = max_{s ≤ t} ‖θ_s - θ_0‖ / √(Σ_{s ≤ t} ‖g_s‖²),

so it grows while the params move in a consistent direction and shrinks as the gradients add
up. This is the layer-wise form (LDoG): one distance and one sum per leaf.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars, map_leaves, real_precision
from gradxform._src.protocol.fields import constant, hyperparameter, non_negative, positive, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    Transformation,
    require_params,
    safe_increment,
    zero_count,
)


class ScaleByDistanceOverGradientsState(NamedTuple):
    """Per leaf: `max_dist` r̄_t (a scalar), `grad_sum_of_squares` G_t (a scalar), and
    `init_params` θ_0 in `param_dtype`."""

    count: Any
    max_dist: Any
    grad_sum_of_squares: Any
    init_params: Any


def _sq_norm(x, dtype):
    return jnp.sum(abs_sq(tree_utils.widen(x, jnp.zeros((), dtype))))


@pytree_dataclass(positional=4)
class scale_by_distance_over_gradients(Transformation):
    """Layer-wise DoG: each leaf's update scaled by its distance travelled over its gradients.

        r̄_t = max(r̄_{t-1}, ‖θ_t - θ_0‖),       r̄_0 = r_ε (1 + ‖θ_0‖)
        G_t = G_{t-1} + ‖g_t‖²,                 G_0 = 0
        u_t = s · r̄_t / √(G_t + ε) · g_t       (per leaf)

    r_ε, the initial movement, keeps the first steps from being zero; θ_t are the params
    before this step. For descent pass `global_scale=-1` or follow with
    `scale_by_learning_rate(1.0)`. The authors recommend averaging the iterates
    (`ema_params`). The numbers are optax's; r̄ and G are kept as scalars in the params'
    precision (float32 for 16-bit params), so float32 params give float32 updates also under
    `jax_enable_x64` (optax's G is then float64, and so are its updates), and the distance of
    complex params is √(Σ |θ - θ_0|²).

    Args:
      reps_rel: r_ε > 0 (1e-6; the authors suggest 1e-4 for models with batch norm), a number
        or an array (used by `init`, so not a schedule).
      eps: ε ≥ 0, added to G_t under the root (1e-8).
      param_dtype: the dtype θ_0 is stored in (float32), or None for each leaf's own dtype.
      global_scale: s, a factor on every update (1; -1 for descent).

    Returns:
      A transformation with state `ScaleByDistanceOverGradientsState(count, max_dist,
      grad_sum_of_squares, init_params)`. `update` needs params.

    References:
      Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
      Schedule", ICML 2023 (eq. 1 and §3, layer-wise DoG).
    """

    reps_rel: float = constant(1e-6, check=positive)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    param_dtype: DTypeLike | None = static(jnp.float32)
    global_scale: ScalarOrSchedule = hyperparameter(1.0)

    def init(self, params):
        lookup = leaf_scalars(dict(reps=self.reps_rel))

        def initial_distance(p):
            dt = tree_utils.moment_dtype(p)
            if jnp.issubdtype(dt, jnp.complexfloating):
                dt = jnp.finfo(dt).dtype
            norm = jnp.sqrt(_sq_norm(p, dt))
            return lookup(norm).reps * (1 + norm)               # r_ε (1 + ‖θ_0‖)

        def sum_of_squares(p):
            dt = tree_utils.moment_dtype(p)
            return jnp.zeros((), jnp.finfo(dt).dtype)

        def initial_params(p):
            return p if self.param_dtype is None else p.astype(self.param_dtype)

        return ScaleByDistanceOverGradientsState(
            count=zero_count(),
            max_dist=jax.tree.map(initial_distance, params),
            grad_sum_of_squares=jax.tree.map(sum_of_squares, params),
            init_params=jax.tree.map(initial_params, params),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "scale_by_distance_over_gradients")
        hp = self.at(state.count)
        lookup = leaf_scalars(dict(eps=hp.eps, scale=hp.global_scale))

        def one(g, p, r, total, p0):
            wide = jnp.zeros((), real_precision(p, p0, r))
            diff = tree_utils.widen(p, wide) - tree_utils.widen(p0, wide)
            dist = jnp.sqrt(_sq_norm(diff, wide.dtype))                       # ‖θ_t - θ_0‖
            r = jnp.maximum(r, dist.astype(r.dtype))                          # r̄_t
            total = total + _sq_norm(g, total.dtype)                          # G_t
            s = lookup(r, total)
            eta = s.scale * (r / jnp.sqrt(total + s.eps))                     # s r̄_t / √(G_t + ε)
            return (tree_utils.widen(g, eta) * eta).astype(g.dtype), r, total

        updates, max_dist, totals = map_leaves(
            one, updates, params, state.max_dist, state.grad_sum_of_squares, state.init_params,
            num_outputs=3)
        return updates, ScaleByDistanceOverGradientsState(
            count=safe_increment(state.count), max_dist=max_dist, grad_sum_of_squares=totals,
            init_params=state.init_params)
