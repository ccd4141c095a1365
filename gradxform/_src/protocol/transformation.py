"""The transformation protocol: `init(params) -> state`, `update(updates, state, params)`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.protocol.dataclass import PytreeDataclass
from gradxform._src.protocol.schedule import require_scalar, resolve

Params = Any
Updates = Any
OptState = Any

INT32_MAX = np.iinfo(np.int32).max


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""



class Transformation(PytreeDataclass):
    """A gradient transformation: `init(params) -> state`, `update(updates, state, params)`.

    The meaning and argument names are optax's, so a gradxform transformation can be used
    wherever an `optax.GradientTransformation` is expected.

    Before the outermost `update` runs, the trees are checked: `updates` and `params` must have
    the same structure and shapes, `state` must have the structure that `init` gives for such
    params, and updates must be floating point. The check happens when the function is traced,
    so a jitted step pays nothing for it. `pytree_dataclass` adds it, by wrapping each
    transformation class's `update` with `tree_check.checked_update`; see
    `gradxform._src.protocol.tree_check` for when it runs.
    """

    def __post_init__(self) -> None:
        # A `child()` field holds a transformation, or a tuple or mapping of them: one check for
        # every combinator and wrapper, naming the field.
        owner = type(self).__name__
        for name in self._child_fields:
            value = getattr(self, name)
            if isinstance(value, tuple):
                for i, t in enumerate(value):
                    require_transformation(t, owner, f"{name}[{i}]")
            elif isinstance(value, Mapping):
                for key, t in value.items():
                    require_transformation(t, owner, f"{name}[{key!r}]")
            else:
                require_transformation(value, owner, name)
        super().__post_init__()

    def init(self, params: Params) -> OptState:
        raise NotImplementedError

    def update(self, updates: Updates, state: OptState, params: Params | None = None,
               **extra_args: Any) -> tuple[Updates, OptState]:
        raise NotImplementedError

    def at(self, count):
        """This transformation with every scheduled hyperparameter evaluated at `count`.

        Each value is then a scalar, the one this step uses; an array (outside `jax.vmap`,
        where a sweep's batched leaf is a scalar) raises a ValueError naming the field. With
        `count=None` (a transformation that keeps no step count) the values are checked as
        they are given.
        """
        owner = type(self).__name__
        changes = {}
        for name in self._hyper_fields:
            value = getattr(self, name)
            if count is not None:
                value = resolve(value, count)
            require_scalar(owner, name, value)
            changes[name] = value
        return self._replace(**changes)

    def hyperparams(self, state: OptState) -> dict:
        """The current value of each numeric hyperparameter, read with the state's step count,
        and those of the transformations in its `child()` fields, under the field's name.

        A child's state is found in this transformation's state by name: the field
        `<field>_state`, or `<field>`, or `inner_state` for a transformation with one child
        field. A child whose state is not found is read without one (schedules unevaluated).
        """
        count = getattr(state, "count", None)
        out: dict = {}
        for name in self._hyper_fields:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = resolve(value, count) if count is not None else value
        for name in self._child_fields:
            value, child_state = getattr(self, name), self._child_state(state, name)
            if isinstance(value, tuple):
                in_order = (child_state if isinstance(child_state, tuple)
                            else (None,) * len(value))
                out[name] = [_read_hyperparams(t, s)
                             for t, s in zip(value, in_order, strict=False)]
            elif isinstance(value, Mapping):
                by_key = child_state if isinstance(child_state, Mapping) else {}
                out[name] = {k: _read_hyperparams(t, by_key.get(k)) for k, t in value.items()}
            else:
                out[name] = _read_hyperparams(value, child_state)
        return out

    def _child_state(self, state: OptState, name: str) -> OptState | None:
        """The state of the transformations in the child field `name`, found by its name."""
        candidates = [f"{name}_state", name]
        if len(self._child_fields) == 1:
            candidates.append("inner_state")
        for candidate in candidates:
            if candidate in getattr(type(state), "_fields", ()):
                return getattr(state, candidate)
        return None

    def _substates(self, state: OptState) -> list:
        """(key, transformation, state) for each transformation in a child field whose state is
        found (see `hyperparams`), keyed by the field's name: what `get_state` walks through."""
        out = []
        for name in self._child_fields:
            value, child_state = getattr(self, name), self._child_state(state, name)
            if child_state is None:
                continue
            if isinstance(value, tuple) and isinstance(child_state, tuple):
                out += [(f"{name}[{i}]", t, s) for i, (t, s) in enumerate(zip(value, child_state))]
            elif isinstance(value, Mapping) and isinstance(child_state, Mapping):
                out += [(str(k), t, child_state[k]) for k, t in value.items() if k in child_state]
            elif is_transformation(value):
                out.append((name, value, child_state))
        return out


def _read_hyperparams(t, state) -> dict:
    """`t.hyperparams(state)`; without a state, the values as given (schedules unevaluated)."""
    if not hasattr(t, "hyperparams"):
        return {}
    if state is not None:
        return t.hyperparams(state)
    if not isinstance(t, Transformation):
        return {}
    # No state to read a step count from: the values as given, and the children's likewise.
    out: dict = {name: getattr(t, name) for name in t._hyper_fields
                 if getattr(t, name) is not None}
    for name in t._child_fields:
        value = getattr(t, name)
        if isinstance(value, tuple):
            out[name] = [_read_hyperparams(x, None) for x in value]
        elif isinstance(value, Mapping):
            out[name] = {k: _read_hyperparams(x, None) for k, x in value.items()}
        else:
            out[name] = _read_hyperparams(value, None)
    return out


def is_transformation(value) -> bool:
    """Whether `value` follows the protocol: it has callable `init` and `update` (a gradxform
    transformation, an optax `GradientTransformation`, or any such object)."""
    return callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))


def require_transformation(value, where: str, what: str, expected: str = "a transformation"
                           ) -> None:
    """Raises a TypeError naming `what` (an argument of `where`) when `value` is not a
    transformation (`is_transformation`); `expected` names what is expected there."""
    if not is_transformation(value):
        raise TypeError(
            f"{where}: {what} must be {expected} (an object with init and update), got {value!r}"
        )


def require_params(params: Any, where: str, meaning: str = "") -> None:
    """Raises a ValueError when a transformation that reads the params was not given them.

    `meaning` says what the params are to it, e.g. "the fast weights".
    """
    if params is None:
        what = f"params ({meaning})" if meaning else "params"
        raise ValueError(
            f"{where}.update: {what} are required (pass them as update(updates, state, params))"
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
