"""Arithmetic on pytrees, leaf by leaf: optax.tree_utils' functions, with optax's numbers.

Each function maps a jnp operation over the leaves (`tree_add(x, y)` is x + y for every leaf) or
reduces over all the elements of a tree (`tree_sum`, `tree_vdot`, `tree_norm`). Trees combined
with one another must have the same structure; where they do not, the error names the first path
that differs, before jax's own error about treedefs would.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.fields import check_argument, in_interval, integer_at_least


def check_trees(where: str, trees: dict[str, Any], *, is_leaf=None,
                same_shapes: bool = False) -> None:
    """Raises a ValueError naming the first differing path when the trees differ in structure,
    or the first leaf whose shapes do not broadcast (are not equal, with `same_shapes`).

    `trees` maps each tree's name in the message ("tree_x", "lower") to the tree; all are
    compared with the first.
    """
    (name_a, a), *rest = trees.items()
    treedef = jax.tree.structure(a, is_leaf=is_leaf)
    for name_b, b in rest:
        if jax.tree.structure(b, is_leaf=is_leaf) != treedef:
            difference = tree_utils.first_difference_of_structures(a, b, name_a, name_b)
            raise ValueError(
                f"{where}: {name_a} and {name_b} must have the same tree structure; {difference}")
        leaves_b = jax.tree.leaves(b, is_leaf=is_leaf)
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a, is_leaf=is_leaf),
                                leaves_b, strict=True):
            if x is None or y is None:
                continue
            sx, sy = np.shape(x), np.shape(y)
            if same_shapes:
                fits = sx == sy
            else:
                try:
                    np.broadcast_shapes(sx, sy)
                    fits = True
                except ValueError:
                    fits = False
            if not fits:
                rule = "must be equal" if same_shapes else "do not broadcast"
                raise ValueError(
                    f"{where}: leaf '{tree_utils.path_str(path)}' has shape {sx} in {name_a} "
                    f"but {sy} in {name_b}; the shapes {rule}")


# -- leafwise arithmetic --


def tree_add(tree_x: Any, tree_y: Any, *other_trees: Any) -> Any:
    """x + y (+ ...), leaf by leaf.

    Args:
      tree_x: a tree.
      tree_y: a tree of the same structure.
      *other_trees: more trees of that structure to add.

    Returns:
      The sum, a tree of that structure.
    """
    names = {"tree_x": tree_x, "tree_y": tree_y}
    names.update({f"other_trees[{i}]": t for i, t in enumerate(other_trees)})
    check_trees("tree_add", names)
    return jax.tree.map(lambda *leaves: sum(leaves), tree_x, tree_y, *other_trees)


def tree_sub(tree_x: Any, tree_y: Any) -> Any:
    """x - y, leaf by leaf."""
    check_trees("tree_sub", {"tree_x": tree_x, "tree_y": tree_y})
    return jax.tree.map(operator.sub, tree_x, tree_y)


def tree_mul(tree_x: Any, tree_y: Any) -> Any:
    """x * y, leaf by leaf (elementwise)."""
    check_trees("tree_mul", {"tree_x": tree_x, "tree_y": tree_y})
    return jax.tree.map(operator.mul, tree_x, tree_y)


def tree_div(tree_x: Any, tree_y: Any) -> Any:
    """x / y, leaf by leaf (elementwise)."""
    check_trees("tree_div", {"tree_x": tree_x, "tree_y": tree_y})
    return jax.tree.map(operator.truediv, tree_x, tree_y)


def tree_scale(scalar: ArrayLike, tree: Any) -> Any:
    """scalar * x for every leaf x."""
    return jax.tree.map(lambda x: scalar * x, tree)


def tree_add_scale(tree_x: Any, scalar: ArrayLike, tree_y: Any) -> Any:
    """x + scalar * y, leaf by leaf; a None leaf of `tree_x` stays None."""
    check_trees("tree_add_scale", {"tree_x": tree_x, "tree_y": tree_y},
                is_leaf=tree_utils.is_none)
    scalar = jnp.asarray(scalar)
    return jax.tree.map(lambda x, y: None if x is None else x + scalar * y, tree_x, tree_y,
                        is_leaf=tree_utils.is_none)


def tree_conj(tree: Any) -> Any:
    """The complex conjugate of every leaf."""
    return jax.tree.map(jnp.conj, tree)


def tree_real(tree: Any) -> Any:
    """The real part of every leaf."""
    return jax.tree.map(jnp.real, tree)


def tree_clip(tree: Any, min_value: ArrayLike | None = None,
              max_value: ArrayLike | None = None) -> Any:
    """Every element clipped to [min_value, max_value] (None: no bound on that side)."""
    return jax.tree.map(lambda x: jnp.clip(x, min_value, max_value), tree)


def tree_where(condition: ArrayLike, tree_x: Any, tree_y: Any) -> Any:
    """x where `condition` holds, else y, leaf by leaf (`jnp.where(condition, x, y)`)."""
    check_trees("tree_where", {"tree_x": tree_x, "tree_y": tree_y})
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), tree_x, tree_y)


def tree_batch_shape(tree: Any, shape: tuple[int, ...] = ()) -> Any:
    """Every leaf broadcast to leading batch dimensions: x of shape s becomes (*shape, *s)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (*shape, *jnp.shape(x))), tree)


# -- trees of constants --


def tree_zeros_like(tree: Any, dtype: DTypeLike | None = None) -> Any:
    """A tree of zeros shaped like `tree`, in each leaf's dtype unless `dtype` is given."""
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


def tree_ones_like(tree: Any, dtype: DTypeLike | None = None) -> Any:
    """A tree of ones shaped like `tree`, in each leaf's dtype unless `dtype` is given."""
    return jax.tree.map(lambda x: jnp.ones_like(x, dtype=dtype), tree)


def tree_full_like(tree: Any, fill_value: ArrayLike, dtype: DTypeLike | None = None) -> Any:
    """A tree shaped like `tree` with every element `fill_value`."""
    return jax.tree.map(lambda x: jnp.full_like(x, fill_value, dtype=dtype), tree)


# -- reductions over all elements --


def _vdot(a, b) -> jax.Array:
    """Σ_i conj(a_i) b_i of two arrays of one shape, at the highest matmul precision.

    A tensordot over all axes rather than jnp.vdot, whose ravel would move data between the
    devices of a sharded array (and fails under explicit sharding).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
        a = jnp.conj(a)
    mesh = jax.typeof(a).sharding.mesh
    sharding = (jax.sharding.NamedSharding(mesh, jax.P()) if mesh.are_all_axes_explicit
                else None)
    return jnp.tensordot(a, b, a.ndim, precision=jax.lax.Precision.HIGHEST,
                         out_sharding=sharding)


def tree_vdot(tree_x: Any, tree_y: Any) -> ArrayLike:
    """⟨x, y⟩ = Σ_leaves Σ_i conj(x_i) y_i, the inner product of two trees (a scalar)."""
    check_trees("tree_vdot", {"tree_x": tree_x, "tree_y": tree_y}, same_shapes=True)
    return jax.tree.reduce(operator.add, jax.tree.map(_vdot, tree_x, tree_y), initializer=0)


def tree_sum(tree: Any, associative_reduction: bool = False) -> ArrayLike:
    """Σ of all the elements of a tree (0 for an empty tree).

    Args:
      tree: a tree.
      associative_reduction: add the leaves' sums as a balanced tree
        (`jax.tree.reduce_associative`, faster to compile for many leaves) instead of left to
        right; the rounding differs in the last bits.
    """
    sums = jax.tree.map(jnp.sum, tree)
    if associative_reduction:
        return jax.tree.reduce_associative(operator.add, sums, identity=0)
    return jax.tree.reduce(operator.add, sums, initializer=0)


def _leaf_max(x):
    return None if jnp.size(x) == 0 else jnp.max(x)


def _leaf_min(x):
    return None if jnp.size(x) == 0 else jnp.min(x)


def tree_max(tree: Any) -> ArrayLike:
    """The largest element of a tree (-inf for a tree without elements)."""
    return jax.tree.reduce(jnp.maximum, jax.tree.map(_leaf_max, tree), initializer=-float("inf"))


def tree_min(tree: Any) -> ArrayLike:
    """The smallest element of a tree (inf for a tree without elements)."""
    return jax.tree.reduce(jnp.minimum, jax.tree.map(_leaf_min, tree), initializer=float("inf"))


def tree_size(tree: Any) -> int:
    """The number of elements of a tree, Σ_leaves size(x)."""
    return sum(int(jnp.size(x)) for x in jax.tree.leaves(tree))


def _square(x):
    return jnp.square(x.real) + jnp.square(x.imag)


def tree_norm(tree: Any, ord: int | str | float | None = None,  # noqa: A002 (optax's name)
              squared: bool = False) -> jax.Array:
    """The vector norm of all the elements of a tree, as if they were one vector.

        ‖x‖_2 = √(Σ |x_i|²),   ‖x‖_1 = Σ |x_i|,   ‖x‖_∞ = max |x_i|

    Args:
      tree: a tree.
      ord: None or 2, 1, or inf (`jnp.inf`, "inf" or "infinity").
      squared: return the norm squared (for ord=2, without forming the square root).

    Returns:
      A scalar array.
    """
    if ord is None or (not isinstance(ord, str) and ord == 2):
        sqnorm = tree_sum(jax.tree.map(_square, tree))
        return jnp.array(sqnorm if squared else jnp.sqrt(sqnorm))
    if not isinstance(ord, str) and ord == 1:
        ret = tree_sum(jax.tree.map(jnp.abs, tree))
    elif ord in ("inf", "infinity") or (not isinstance(ord, str) and ord == jnp.inf):
        ret = tree_max(jax.tree.map(jnp.abs, tree))
    else:
        raise ValueError(
            f"tree_norm: ord must be None, 2, 1 or inf (jnp.inf, 'inf' or 'infinity'), "
            f"got {ord!r}")
    return jnp.array(_square(jnp.asarray(ret)) if squared else ret)


def tree_allclose(a: Any, b: Any, rtol: ArrayLike = 1e-05, atol: ArrayLike = 1e-08,
                  equal_nan: bool = False) -> ArrayLike:
    """Whether every leaf of `a` is `jnp.allclose` to that of `b`: |a - b| ≤ atol + rtol |b|."""
    check_trees("tree_allclose", {"a": a, "b": b})
    close = jax.tree.map(
        lambda x, y: jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan), a, b)
    return functools.reduce(operator.and_, jax.tree.leaves(close), True)


# -- slow copies of the params --


def incremental_update(new_tensors: Any, old_tensors: Any, step_size: ArrayLike) -> Any:
    """Polyak averaging: an exponential moving average of the params, for evaluation.

        θ̄_t = τ θ_t + (1 - τ) θ̄_{t-1}

    Args:
      new_tensors: θ_t, the latest params.
      old_tensors: θ̄_{t-1}, the average so far (the same structure; None leaves stay None).
      step_size: τ in [0, 1], the weight of the latest params.

    Returns:
      θ̄_t.

    References:
      Polyak & Juditsky, 1992, "Acceleration of stochastic approximation by averaging"
      (https://epubs.siam.org/doi/10.1137/0330046).
    """
    if isinstance(step_size, int | float | np.ndarray | np.generic) and np.ndim(step_size) == 0:
        check_argument("incremental_update", "step_size", float(step_size),
                       in_interval(0, 1, "[]"))
    check_trees("incremental_update", {"new_tensors": new_tensors, "old_tensors": old_tensors},
                is_leaf=tree_utils.is_none)
    return jax.tree.map(
        lambda new, old: None if new is None else step_size * new + (1.0 - step_size) * old,
        new_tensors, old_tensors, is_leaf=tree_utils.is_none)


def periodic_update(new_tensors: Any, old_tensors: Any, steps: ArrayLike,
                    update_period: ArrayLike) -> Any:
    """A copy of the params refreshed every `update_period` steps (a target network).

        θ̄_t = θ_t if t mod K = 0 else θ̄_{t-1}

    Args:
      new_tensors: θ_t, the latest params.
      old_tensors: θ̄_{t-1}, the copy so far (the same structure).
      steps: t, the number of updates of the params so far (an integer, may be traced).
      update_period: K ≥ 1.

    Returns:
      θ̄_t, selected with `lax.cond` (no host sync).

    References:
      Mnih et al., 2015, "Human-level control through deep reinforcement learning"
      (https://www.nature.com/articles/nature14236); Grill et al., 2020, "Bootstrap your own
      latent" (https://arxiv.org/abs/2006.07733).
    """
    if isinstance(update_period, int | np.integer):
        check_argument("periodic_update", "update_period", update_period, integer_at_least(1))
    check_trees("periodic_update", {"new_tensors": new_tensors, "old_tensors": old_tensors})
    return jax.lax.cond(jnp.mod(steps, update_period) == 0,
                        lambda _: new_tensors, lambda _: old_tensors, None)
