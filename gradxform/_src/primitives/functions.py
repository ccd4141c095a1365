"""Transformations written as a plain function of the updates (and params), keeping no state."""

from __future__ import annotations

from collections.abc import Callable

import jax

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import static
from gradxform._src.protocol.transformation import EmptyState, Transformation


@pytree_dataclass
class stateless(Transformation):
    """The transformation u_t = f(g_t, θ_{t-1}) of a function of the whole trees.

    Args:
      f: `f(updates, params) -> updates`; `params` is None when `update` is given none.

    Returns:
      A transformation with state `EmptyState()`.

    References:
      optax.stateless.
    """

    f: Callable = static()

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return self.f(updates, params), EmptyState()


@pytree_dataclass
class stateless_with_tree_map(Transformation):
    """The transformation u_t,i = f(g_t,i, θ_{t-1},i) of a function of one leaf, leaf by leaf.

    Args:
      f: `f(update_leaf, param_leaf) -> update_leaf`; `param_leaf` is None when `update` is
        given no params.

    Returns:
      A transformation with state `EmptyState()`.

    References:
      optax.stateless_with_tree_map.
    """

    f: Callable = static()

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            return tree_utils.tree_map_with_none(lambda g: self.f(g, None), updates), EmptyState()
        return jax.tree.map(self.f, updates, params), EmptyState()
