"""The transformation protocol: `init(params) -> state`, `update(updates, state, params)`."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import PytreeDataclass
from gradxform._src.protocol.schedule import resolve

Params = Any
Updates = Any
OptState = Any

INT32_MAX = np.iinfo(np.int32).max


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""



_checking = threading.local()


class Transformation(PytreeDataclass):
    """A gradient transformation: `init(params) -> state`, `update(updates, state, params)`.

    The meaning and argument names are optax's, so a gradxform transformation can be used
    wherever an `optax.GradientTransformation` is expected.

    Before the outermost `update` runs, the trees are checked: `updates` and `params` must have
    the same structure and shapes, `state` must have the structure that `init` gives for such
    params, and updates must be floating point. The check happens when the function is traced,
    so a jitted step pays nothing for it.
    """

    def init(self, params: Params) -> OptState:
        raise NotImplementedError

    def update(self, updates: Updates, state: OptState, params: Params | None = None,
               **extra_args: Any) -> tuple[Updates, OptState]:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "update" in cls.__dict__:
            cls.update = _checked_update(cls.__dict__["update"])

    def at(self, count):
        """This transformation with every scheduled hyperparameter evaluated at `count`."""
        changes = {
            name: resolve(getattr(self, name), count) for name in self._hyper_fields
        }
        return self._replace(**changes)

    def hyperparams(self, state: OptState) -> dict:
        """The current value of each numeric hyperparameter, read with the state's step count."""
        count = getattr(state, "count", None)
        out = {}
        for name in self._hyper_fields:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = resolve(value, count) if count is not None else value
        return out


def _checked_update(update_fn):
    def update(self, updates, state, params=None, **extra_args):
        if getattr(_checking, "active", False):
            return update_fn(self, updates, state, params, **extra_args)
        _check_trees(self, updates, state, params)
        _checking.active = True
        try:
            return update_fn(self, updates, state, params, **extra_args)
        finally:
            _checking.active = False

    update.__doc__ = update_fn.__doc__
    update.__name__ = update_fn.__name__
    update.__qualname__ = update_fn.__qualname__
    update.__wrapped__ = update_fn
    return update


_STATE_STRUCTURE_CACHE: dict = {}


def _expected_state_structure(transformation, updates):
    """The structure and leaf shapes of `transformation.init(params)` for params like `updates`."""
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    key = (
        jax.tree_util.tree_structure(transformation),
        treedef,
        tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves),
    )

    def compute():
        shapes = jax.eval_shape(transformation.init, updates)
        return jax.tree_util.tree_structure(shapes), jax.tree_util.tree_leaves_with_path(shapes)

    try:
        return _STATE_STRUCTURE_CACHE[key]
    except KeyError:
        pass
    except TypeError:  # unhashable static data: no caching
        return compute()
    expected = compute()
    if len(_STATE_STRUCTURE_CACHE) > 4096:
        _STATE_STRUCTURE_CACHE.clear()
    _STATE_STRUCTURE_CACHE[key] = expected
    return expected


def _check_trees(transformation, updates, state, params) -> None:
    name = type(transformation).__name__
    tree_utils.check_inexact(updates, f"{name}.update", "updates")
    if params is not None:
        tree_utils.check_same_structure(updates, params, f"{name}.update", "updates", "params")
        tree_utils.check_inexact(params, f"{name}.update", "params")
    expected, expected_leaves = _expected_state_structure(transformation, updates)
    actual = jax.tree_util.tree_structure(state)
    hint = None
    if actual != expected:
        hint = tree_utils.first_difference_of_structures(
            jax.tree_util.tree_unflatten(expected, [0] * expected.num_leaves), state
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


def require_params(params, where: str) -> None:
    """Raises a ValueError when a transformation that reads the params was not given them."""
    if params is None:
        raise ValueError(
            f"{where}.update: params are required (pass them as update(updates, state, params))"
        )


def safe_increment(count: jax.Array) -> jax.Array:
    """count + 1, saturating at the int32 maximum instead of wrapping around to negative."""
    return jnp.where(count < INT32_MAX, count + 1, INT32_MAX).astype(jnp.int32)


def zero_count():
    return jnp.zeros([], jnp.int32)


def float_count(count, like=None):
    """The step count as a float of `like`'s dtype (default: JAX's default float).

    Powers such as β^t need a float t; converting explicitly keeps strict dtype promotion happy.
    """
    dtype = jnp.result_type(like) if hasattr(like, "dtype") else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return jnp.asarray(count).astype(dtype)
