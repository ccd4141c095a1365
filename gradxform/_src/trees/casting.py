"""Dtypes of pytrees and random pytrees: optax.tree_utils' casts, `tree_dtype` and random trees."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.protocol import tree_utils
from gradxform._src.trees.tree_math import check_trees

_DTYPE_HANDLERS = (None, "promote", "highest", "lowest")


def tree_cast(tree: Any, dtype: DTypeLike | None) -> Any:
    """Every leaf cast to `dtype`; the tree unchanged when `dtype` is None."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype), tree)


def tree_cast_like(tree: Any, other_tree: Any) -> Any:
    """Every leaf cast to the dtype of the same leaf of `other_tree` (kept where that leaf has
    no dtype, e.g. a Python number)."""
    check_trees("tree_cast_like", {"tree": tree, "other_tree": other_tree})
    return jax.tree.map(lambda x, o: x.astype(o.dtype) if hasattr(o, "dtype") else x,
                        tree, other_tree)


def _lower(d1, d2):
    """The lower of two dtypes in the order of promotion (d1 ≤ d2 when d1 promotes to d2)."""
    promoted = jnp.promote_types(d1, d2)
    if promoted == d1:
        return d2
    if promoted == d2:
        return d1
    raise ValueError(
        f"tree_dtype: the leaves' dtypes {jnp.dtype(d1).name} and {jnp.dtype(d2).name} are not "
        f"ordered (neither promotes to the other); use mixed_dtype_handler='promote'")


def _higher(d1, d2):
    return d2 if _lower(d1, d2) == d1 else d1


def tree_dtype(tree: Any, mixed_dtype_handler: str | None = None) -> DTypeLike:
    """The dtype of a tree's leaves (JAX's default float dtype for an empty tree).

    Args:
      tree: a tree.
      mixed_dtype_handler: what to do when the leaves' dtypes differ: None raises an error
        naming the leaves; "promote" gives the dtype they all promote to
        (`jnp.promote_types`); "highest" and "lowest" give the highest and lowest in the order of
        promotion, and raise when two leaves' dtypes are not ordered (int32 and uint32).

    Returns:
      A numpy dtype.
    """
    if mixed_dtype_handler not in _DTYPE_HANDLERS:
        raise ValueError(
            f"tree_dtype: mixed_dtype_handler must be one of {_DTYPE_HANDLERS}, got "
            f"{mixed_dtype_handler!r}")
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        return jnp.asarray([]).dtype
    dtypes = [jnp.asarray(x).dtype for _, x in leaves]
    if mixed_dtype_handler is None:
        wrong = [f"'{tree_utils.path_str(p)}' is {d.name}" for (p, _), d in zip(leaves, dtypes)
                 if d != dtypes[0]]
        if wrong:
            raise ValueError(
                f"tree_dtype: the leaves have several dtypes ('{tree_utils.path_str(leaves[0][0])}'"
                f" is {dtypes[0].name}, {', '.join(wrong)}); pass mixed_dtype_handler='promote', "
                f"'highest' or 'lowest' to pick one")
        return dtypes[0]
    reduce = {"promote": jnp.promote_types, "highest": _higher, "lowest": _lower}
    return functools.reduce(reduce[mixed_dtype_handler], dtypes)


def tree_split_key_like(rng_key: jax.Array, target_tree: Any) -> Any:
    """One key per leaf of `target_tree`, `jax.random.split(rng_key, number of leaves)`, as a
    tree of that structure."""
    treedef = jax.tree.structure(target_tree)
    keys = jax.random.split(rng_key, treedef.num_leaves)
    return jax.tree.unflatten(treedef, list(keys))


def tree_random_like(rng_key: jax.Array, target_tree: Any,
                     sampler: Callable[..., jax.Array] = jax.random.normal,
                     dtype: DTypeLike | None = None) -> Any:
    """A tree of random arrays shaped like `target_tree`, each leaf drawn by `sampler` with its
    own key from `tree_split_key_like`.

    Args:
      rng_key: a PRNG key.
      target_tree: a tree of arrays.
      sampler: `sampler(key, shape, dtype)` (optionally also taking `out_sharding`, which gets
        the leaf's sharding), `jax.random.normal` by default.
      dtype: the dtype to draw in; by default each leaf's dtype.

    Returns:
      A tree of the structure of `target_tree`.
    """
    keys = tree_split_key_like(rng_key, target_tree)
    if "out_sharding" in inspect.signature(sampler).parameters:
        def draw(x, key):
            return sampler(key, x.shape, dtype or x.dtype, out_sharding=jax.typeof(x).sharding)
    else:
        def draw(x, key):
            return sampler(key, x.shape, dtype or x.dtype)
    return jax.tree.map(draw, target_tree, keys)


def tree_unwrap_random_key_data(input_tree: Any) -> Any:
    """Typed PRNG keys (`jax.random.key`) replaced by their raw data (`jax.random.key_data`),
    so a tree holding keys can be compared numerically."""
    def unwrap(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(unwrap, input_tree)
