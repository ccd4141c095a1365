"""Step sizes from the distance travelled over the gradients seen: DoG, its layer-wise form,
and DoWG.

None needs a learning rate: the step size at step t is the largest distance the params have
moved from where they started, r̄_t = max_{k ≤ t} ‖θ_k - θ_0‖, over a root of the sum of squared
gradient norms so far (DoG), or of one weighted with the squared distances (DoWG),

    η_t = r̄_t / √(Σ_{k ≤ t} ‖g_k‖²),

so it grows while the params move in a consistent direction and shrinks as the gradients add
up. `scale_by_distance_over_gradients` is the layer-wise form (LDoG: one distance and one sum
per leaf, optax's name of that name); `scale_by_dog` and `scale_by_dowg` set one step size for
the whole tree (optax.contrib's).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.clipping import global_norm, norm_dtype
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

InitStep = tuple[Literal["distance", "learning_rate", "heuristic"], float]


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



def scalar_state_dtype(params) -> jnp.dtype:
    """The dtype of a whole-tree scalar of the state: the lowest precision among the params
    (optax's choice), widened to float32 for 16-bit params (a sum of squared norms in bfloat16
    stops growing after a few steps)."""
    leaves = [x for x in jax.tree_util.tree_leaves(params)]
    if not leaves:
        return jnp.dtype(jnp.result_type(float))
    lowest = min((jnp.finfo(jnp.result_type(x)).dtype for x in leaves),
                 key=lambda d: jnp.finfo(d).bits)
    return tree_utils.moment_dtype(jnp.zeros((), lowest))


def copy_params(params):
    """x_0, its own arrays (a step that donates params must not donate the state's copy)."""
    return jax.tree.map(jnp.copy, params)


def squared_norm(tree) -> jax.Array:
    """‖u‖² = Σ_leaves Σ_i |u_i|², in `global_norm`'s precision (without its root)."""
    dtype = norm_dtype(tree)
    total = jnp.zeros([], dtype)
    for x in jax.tree_util.tree_leaves(tree):
        if jnp.iscomplexobj(x):  # widened first: 16-bit leaves are squared in float32
            wide = x.astype(jnp.complex128 if dtype == jnp.float64 else jnp.complex64)
        else:
            wide = x.astype(dtype)
        total = total + jnp.sum(abs_sq(wide))
    return total


def difference(a, b):
    return jax.tree.map(lambda x, y: x - y, a, b)


def scale_tree(updates, factor):
    lookup = leaf_scalars(dict(c=factor))
    return jax.tree.map(lambda g: g * lookup(g).c, updates)


class DoGState(NamedTuple):
    is_init_step: Any
    init_params: Any
    max_dist: Any
    sum_sq_norm_grads: Any


def _check_init_step(value) -> str | None:
    kinds = ("distance", "learning_rate", "heuristic")
    allowed = f"a pair (kind, value) with kind in {kinds} and a finite value > 0"
    if not (isinstance(value, tuple) and len(value) == 2 and value[0] in kinds):
        return allowed
    v = value[1]
    if isinstance(v, bool) or not isinstance(v, int | float | np.floating | np.integer):
        return allowed
    return None if np.isfinite(v) and v > 0 else allowed


@pytree_dataclass(positional=2)
class scale_by_dog(Transformation):
    """DoG's step: the gradient times the largest distance from x_0 over the gradients' norm.

        r̄_t = max(r̄_{t-1}, ‖x_t - x_0‖),   G_t = G_{t-1} + ‖g_t‖²
        η_t = r̄_t / √(G_t + ε),   u_t = η_t g_t

    r̄_0 = r_ε is the first step's distance, given by `init_step = (kind, value)`:
    - ("heuristic", α): r_ε = α (1 + ‖x_0‖), the paper's recommendation (α = 1e-6);
    - ("distance", r): r_ε = r;
    - ("learning_rate", η_0): r_ε = 0 and the first step uses η_0 instead of η_1.
    The paper's "T-DoG" uses the same η_t per layer; this is its global version, optax's
    `scale_by_dog` (optax.contrib._dog), with its numbers. The scalars of the state are kept in
    the params' lowest precision, float32 for 16-bit params. `init_step` is static (changing
    it recompiles): it picks how the state is built.

    Args:
      init_step: (kind, value), see above.
      eps: ε > 0 inside the root, against a division by zero at zero gradients.

    References:
      Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
      Schedule", ICML 2023 (arXiv:2302.12022), Algorithm 1.
    """

    init_step: InitStep = static(("heuristic", 1e-6), check=_check_init_step)
    # Constants: the state keeps no step count (optax's), so there is no step to evaluate a
    # schedule at.
    eps: float = constant(1e-8, check=positive)

    def init(self, params):
        dtype = scalar_state_dtype(params)
        kind, value = self.init_step
        if kind == "distance":
            r_eps = jnp.asarray(value, dtype)
        elif kind == "heuristic":
            r_eps = value * (1 + global_norm(params).astype(dtype))
        else:
            r_eps = jnp.zeros((), dtype)
        return DoGState(is_init_step=jnp.asarray(True), init_params=copy_params(params),
                        max_dist=jnp.asarray(r_eps, dtype),
                        sum_sq_norm_grads=jnp.zeros((), dtype))

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "scale_by_dog", "the distance from x_0 is measured at them")
        dtype = jnp.result_type(state.max_dist)
        dist = global_norm(difference(state.init_params, params)).astype(dtype)
        max_dist = jnp.maximum(state.max_dist, dist)                   # r̄_t
        g_sq = squared_norm(updates).astype(dtype)
        sum_sq = state.sum_sq_norm_grads + g_sq                        # G_t
        eta = max_dist / jnp.sqrt(sum_sq + jnp.asarray(self.eps).astype(dtype))
        kind, value = self.init_step
        if kind == "learning_rate":
            eta = jnp.where(state.is_init_step, jnp.asarray(value, dtype), eta)
        new_state = DoGState(is_init_step=jnp.asarray(False), init_params=state.init_params,
                             max_dist=max_dist, sum_sq_norm_grads=sum_sq)
        return scale_tree(updates, eta), new_state


class DoWGState(NamedTuple):
    init_params: Any
    weighted_sq_norm_grads: Any
    estim_sq_dist: Any


@pytree_dataclass(positional=2)
class scale_by_dowg(Transformation):
    """DoWG's step: DoG with the squared gradient norms weighted by the squared distances.

        r̄²_t = max(r̄²_{t-1}, ‖x_t - x_0‖²),   v_t = v_{t-1} + r̄²_t ‖g_t‖²
        η_t = r̄²_t / (√v_t + ε),   u_t = η_t g_t

    Weighting by r̄² makes the sum forget the small gradients of the start relative to the later
    ones ("distance over weighted gradients"), and the method adapts to smooth and non-smooth
    problems alike. r̄²_0 is `init_estim_sq_dist` (ε when None). optax's `scale_by_dowg`
    (optax.contrib._dog), with its numbers.

    Args:
      init_estim_sq_dist: r̄²_0 > 0, or None for ε.
      eps: ε > 0, added to the root.

    References:
      Khaled, Mishchenko & Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method", NeurIPS 2023 (arXiv:2305.16284), Algorithm 1.
    """

    # Constants: the state keeps no step count (optax's), so there is no step to evaluate a
    # schedule at.
    init_estim_sq_dist: float | None = constant(None, check=positive)
    eps: float = constant(1e-4, check=positive)

    def init(self, params):
        dtype = scalar_state_dtype(params)
        r0 = self.eps if self.init_estim_sq_dist is None else self.init_estim_sq_dist
        return DoWGState(init_params=copy_params(params),
                         weighted_sq_norm_grads=jnp.zeros((), dtype),
                         estim_sq_dist=jnp.asarray(r0, dtype))

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "scale_by_dowg", "the distance from x_0 is measured at them")
        dtype = jnp.result_type(state.estim_sq_dist)
        sq_dist = squared_norm(difference(state.init_params, params)).astype(dtype)
        estim_sq_dist = jnp.maximum(state.estim_sq_dist, sq_dist)      # r̄²_t
        g_sq = squared_norm(updates).astype(dtype)
        weighted = estim_sq_dist * g_sq + state.weighted_sq_norm_grads  # v_t
        eta = estim_sq_dist / (jnp.sqrt(weighted) + jnp.asarray(self.eps).astype(dtype))
        new_state = DoWGState(init_params=state.init_params, weighted_sq_norm_grads=weighted,
                              estim_sq_dist=estim_sq_dist)
        return scale_tree(updates, eta), new_state

