"""Masks: which leaves a transformation touches, given as a tree of bools or a function of params."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from gradxform import _tree


class StaticMask:
    """A mask held as static (hashable) data: a tree of Python bools or a callable on params."""

    __slots__ = ("value", "_key")

    def __init__(self, value: Any):
        self.value = value
        if callable(value):
            self._key = ("callable", value)
        else:
            leaves, treedef = jax.tree_util.tree_flatten(value)
            for path, leaf in jax.tree_util.tree_leaves_with_path(value):
                if not isinstance(leaf, bool):
                    raise TypeError(
                        f"mask leaf '{_tree.path_str(path)}' is {leaf!r}; mask leaves must be "
                        f"Python bools (True: the transformation applies to that subtree)"
                    )
            self._key = ("tree", treedef, tuple(leaves))

    def __eq__(self, other):
        return isinstance(other, StaticMask) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return getattr(self.value, "__name__", None) or repr(self.value)

    def resolve(self, params, where: str):
        """The mask as a full tree of bools with the structure of `params`."""
        mask = self.value(params) if callable(self.value) else self.value
        return broadcast_mask(mask, params, where)


def broadcast_mask(mask, tree, where: str):
    """Expands a mask given as a prefix of `tree` (a bool for a whole subtree) to every leaf."""
    try:
        return jax.tree.map(
            lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, tree,
            is_leaf=lambda x: isinstance(x, bool),
        )
    except ValueError:
        pass
    paths_tree = [_tree.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    for path, _ in jax.tree_util.tree_leaves_with_path(mask):
        p = _tree.path_str(path)
        if not any(q == p or q.startswith(p + "/") for q in paths_tree):
            raise ValueError(f"{where}: mask has key '{p}' that params lacks")
    for q in paths_tree:
        mask_paths = [_tree.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(mask)]
        if not any(q == p or q.startswith(p + "/") for p in mask_paths):
            raise ValueError(f"{where}: params has key '{q}' that the mask does not cover")
    raise ValueError(f"{where}: the mask's structure is not a prefix of the params' structure")


def as_static_mask(mask) -> StaticMask | None:
    if mask is None or isinstance(mask, StaticMask):
        return mask
    return StaticMask(mask)


MaskLike = Any | Callable[[Any], Any] | None
