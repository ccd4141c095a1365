"""Step sizes from the distance travelled over the gradients seen: DoG and DoWG.

Both set one scalar step size for the whole tree, with no learning rate to tune: the largest
distance r̄_t = max_{k ≤ t} ‖x_k - x_0‖ that the iterates have moved from the start, divided by
a root of the sum of squared gradient norms (DoG), or by one weighted with the squared distances
(DoWG). Early on r̄ is small and the steps cautious; they grow as the iterates move.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.clipping import global_norm, norm_dtype
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import hyperparameter, positive, static
from gradxform._src.protocol.transformation import Transformation, require_params

InitStep = tuple[Literal["distance", "learning_rate", "heuristic"], float]


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
    eps: float = hyperparameter(1e-8, check=positive)

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

    init_estim_sq_dist: float | None = hyperparameter(None, check=positive)
    eps: float = hyperparameter(1e-4, check=positive)

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

