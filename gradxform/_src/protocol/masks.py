"""Masks: which leaves a transformation touches (a tree of bools or a function of params)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gradxform._src.protocol import tree_utils


class StaticValue:
    """A user's tree or callable held as static (hashable) data of a transformation.

    Compared and hashed by `key` (a callable by identity, a tree by its structure and leaves),
    so that it can key the jit cache; shown as the value itself in the transformation's repr.
    """

    __slots__ = ("value", "_key")

    _key: tuple

    def __init__(self, value: Any, key: tuple):
        self.value = value
        self._key = key
        hash(key)

    @staticmethod
    def tree_key(value: Any) -> tuple:
        leaves, treedef = jax.tree_util.tree_flatten(value)
        return ("tree", treedef, tuple(leaves))

    def __eq__(self, other):
        return type(other) is type(self) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return getattr(self.value, "__name__", None) or repr(self.value)


def mask_bool(leaf: Any, where: str, path: str) -> bool:
    """A mask leaf as a Python bool: a Python or NumPy bool, or a concrete boolean scalar array
    (`jnp.array(True)`). A traced value cannot decide which leaves a transformation touches,
    since that is fixed when the step is traced; the TypeError says so."""
    if isinstance(leaf, bool | np.bool_):
        return bool(leaf)
    if isinstance(leaf, jax.core.Tracer):
        raise TypeError(
            f"{where}: the mask has a traced value at '{path}'; mask leaves must be Python bools "
            f"or concrete boolean arrays, known when the step is traced (decide from names, "
            f"shapes or dtypes, not from values inside the jitted function)"
        )
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and np.dtype(dtype) == np.bool_ and np.shape(leaf) == ():
        return bool(np.asarray(leaf))
    raise TypeError(
        f"{where}: the mask has {leaf!r} at '{path}'; mask leaves must be Python or NumPy bools "
        f"or boolean scalar arrays (True: the transformation applies to that subtree)"
    )


def concrete_mask(value: Any, where: str) -> Any:
    """The mask tree `value` with every leaf a Python bool (see `mask_bool`)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, m: mask_bool(m, where, tree_utils.path_str(path)), value)


class StaticMask(StaticValue):
    """A mask held as static (hashable) data: a tree of Python bools or a callable on params."""

    __slots__ = ()

    def __init__(self, value: Any):
        if callable(value):
            super().__init__(value, ("callable", value))
            return
        value = concrete_mask(value, "mask")
        super().__init__(value, self.tree_key(value))

    def resolve(self, params, where: str):
        """The mask as a full tree of bools with the structure of `params`."""
        mask = self.value(params) if callable(self.value) else self.value
        return broadcast_mask(concrete_mask(mask, where), params, where)


def broadcast_mask(mask, tree, where: str):
    """Expands a mask given as a prefix of `tree` (a bool for a whole subtree) to every leaf."""
    try:
        return jax.tree.map(
            lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, tree,
            is_leaf=lambda x: isinstance(x, bool),
        )
    except ValueError:
        pass
    values = prefix_values(mask, tree, where, "mask")
    treedef = jax.tree_util.tree_structure(tree, is_leaf=tree_utils.is_none)
    return jax.tree_util.tree_unflatten(treedef, values)


def path_segments(path) -> tuple[str, ...]:
    return tuple(tree_utils.path_str((key,)) for key in path)


def prefix_values(prefix, tree, where: str, what: str) -> list:
    """The value of `prefix` (a tree that is a prefix of `tree`) for every leaf of `tree`.

    Returns one value per leaf of `tree` in flattening order, None leaves included (their value
    is None). Paths are compared as `layer1/w` strings, so a dict prefix works for params held in
    another mapping type. A None subtree of `tree` accepts any prefix subtree: an enclosing
    `masked` or `partition` hides leaves as None, and a finer inner mask must still apply.
    Raises a ValueError naming the first path where the two trees disagree.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=tree_utils.is_none)[0]
    tree_paths = [(path_segments(path), leaf is None) for path, leaf in leaves]
    given = {path_segments(path): value for path, value in
             jax.tree_util.tree_flatten_with_path(prefix)[0]}
    covered = {segs[:i] for segs, _ in tree_paths for i in range(len(segs) + 1)}
    hidden = {segs for segs, is_none in tree_paths if is_none}
    for segs in given:
        if segs not in covered and not any(segs[:i] in hidden for i in range(len(segs))):
            raise ValueError(f"{where}: {what} has key '{'/'.join(segs)}' that params lacks")
    values: list = []
    for segs, is_none in tree_paths:
        if is_none:
            values.append(None)
            continue
        for i in range(len(segs) + 1):
            if segs[:i] in given:
                values.append(given[segs[:i]])
                break
        else:
            raise ValueError(
                f"{where}: params has key '{'/'.join(segs) or '<root>'}' that the {what} does "
                f"not cover"
            )
    return values


def as_static_mask(mask) -> StaticMask | None:
    if mask is None or isinstance(mask, StaticMask):
        return mask
    return StaticMask(mask)


MaskLike = Any | Callable[[Any], Any] | None
