"""The check of the trees given to `update`, run once per step before the outermost update.

`update(updates, state, params)` fails early, with the first differing path named, when

- `updates` (or `params`) hold integer, boolean or float0 leaves;
- `updates` and `params` differ in structure or in the shape of a leaf
  (`update: updates has key 'layer2/bias' that params lacks`);
- `state` is not the state `init` gives for such params (a stale state after the model or the
  optimizer changed), naming the first differing state path.

When it runs. `pytree_dataclass` wraps the `update` method of every transformation class with
`checked_update` (the class's own `update` or the one it inherits, e.g.
`ElementwiseTransformation.update`). The wrapper checks only in the outermost call: a chain's
`update` calls its members' `update`s, which see a context variable saying that the trees were
checked already, so a chain of twenty transformations checks once. The check runs in Python
when the step is traced, so a jitted step pays nothing for it per call; the state structure that
`init` gives is computed with `jax.eval_shape` and kept in a bounded cache per structure of
transformation and params.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.caches import LRUCache

# True while an `update` that has checked its trees runs: the updates it calls check nothing.
_inside_checked_update = contextvars.ContextVar("inside_checked_update", default=False)

_state_structures = LRUCache(maxsize=1024)


def checked_update(update: Callable) -> Callable:
    """`update` that first checks its trees, when it is the outermost `update` running."""
    if getattr(update, "checks_trees", False):
        return update

    @functools.wraps(update)
    def checked(self, updates, state, params=None, **extra_args):
        if _inside_checked_update.get():
            return check_result(self, update(self, updates, state, params, **extra_args))
        check_trees(self, updates, state, params)
        token = _inside_checked_update.set(True)
        try:
            return check_result(self, update(self, updates, state, params, **extra_args))
        finally:
            _inside_checked_update.reset(token)

    checked.checks_trees = True  # type: ignore[attr-defined]
    return checked


def check_result(transformation, result):
    """`result` when it is the pair `update` must return; a TypeError naming the fix otherwise
    (a chain would fail later, deep inside, with "not enough values to unpack")."""
    if isinstance(result, tuple) and len(result) == 2:
        return result
    name = type(transformation).__name__
    got = (f"a tuple of {len(result)} values" if isinstance(result, tuple)
           else f"one value ({type(result).__name__})")
    raise TypeError(
        f"{name}.update must return a pair (updates, state), got {got}; end it with "
        f"`return updates, new_state` (the state unchanged if it keeps none: `return updates, "
        f"state`)"
    )


def expected_state_structure(transformation, updates):
    """The structure and the (path, shape) leaves of `transformation.init(params)` for params
    like `updates`, computed with `jax.eval_shape` once per structure and shapes."""
    def compute():
        shapes = jax.eval_shape(transformation.init, updates)
        return jax.tree_util.tree_structure(shapes), jax.tree_util.tree_leaves_with_path(shapes)

    leaves, treedef = jax.tree_util.tree_flatten(updates)
    key = (
        jax.tree_util.tree_structure(transformation),
        treedef,
        tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves),
    )
    try:
        hash(key)
    except TypeError:  # unhashable static data: no caching
        return compute()
    return _state_structures.get_or_compute(key, compute)


def takes_per_example_updates(transformation) -> bool:
    """Whether the updates given to `transformation` carry a batch axis that the params lack:
    it, or the first member of its chain, declares `per_example_updates = True` (DP-SGD's
    aggregation of per-example gradients)."""
    if getattr(transformation, "per_example_updates", False):
        return True
    members = getattr(transformation, "transforms", None)
    return isinstance(members, tuple) and bool(members) and takes_per_example_updates(members[0])


def check_trees(transformation, updates, state, params) -> None:
    """Raises a ValueError (TypeError for non-float leaves) naming the first tree mismatch.

    For per-example updates (`takes_per_example_updates`), the updates are not compared with
    the params, and the state is checked against `init(params)` when params are given.
    """
    name = type(transformation).__name__
    tree_utils.check_inexact(updates, f"{name}.update", "updates")
    per_example = takes_per_example_updates(transformation)
    if params is not None:
        if not per_example:
            tree_utils.check_same_structure(updates, params, f"{name}.update", "updates",
                                            "params")
        tree_utils.check_inexact(params, f"{name}.update", "params")
    if per_example and params is None:
        return
    expected, expected_leaves = expected_state_structure(
        transformation, params if per_example else updates)
    actual = jax.tree_util.tree_structure(state)
    hint = None
    if actual != expected:
        hint = tree_utils.first_difference_of_structures(
            jax.tree_util.tree_unflatten(expected, [0] * expected.num_leaves), state,
            "the state init gives", "this state",
        )
    else:
        for (path, want), have in zip(expected_leaves, jax.tree_util.tree_leaves(state)):
            if jnp.shape(have) != want.shape:
                hint = (f"state leaf '{tree_utils.path_str(path)}' has shape {jnp.shape(have)}, "
                        f"init gives {want.shape}")
                break
    if hint is not None:
        raise ValueError(
            f"{name}.update: state does not match the state that init gives for these updates "
            f"({hint}). Was the state created by this optimizer, for params of this structure? "
            f"Call init(params) again after changing the model or the optimizer."
        )
