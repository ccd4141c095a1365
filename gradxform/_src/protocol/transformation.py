"""The transformation protocol: `init(params) -> state`, `update(updates, state, params)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.protocol.dataclass import PytreeDataclass, pytree_dataclass
from gradxform._src.protocol.fields import static
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
        # every combinator and wrapper, naming the field. A transformation of another library
        # (an optax one) is adopted as `from_optax(tx)`: static data, so the pytree of this one
        # holds only numbers, its update receives only the extra arguments it takes, and its
        # state is the other library's, untouched.
        owner = type(self).__name__
        for name in self._child_fields:
            value = getattr(self, name)
            if isinstance(value, tuple) and not is_transformation(value):
                value = tuple(adopt(t, owner, f"{name}[{i}]") for i, t in enumerate(value))
            elif isinstance(value, Mapping) and not is_transformation(value):
                value = {key: adopt(t, owner, f"{name}[{key!r}]") for key, t in value.items()}
            else:
                value = adopt(value, owner, name)
            object.__setattr__(self, name, value)
        super().__post_init__()

    def __iter__(self) -> Iterator[Callable]:
        """`init_fn, update_fn = transformation`, as optax's NamedTuple unpacks."""
        return iter((self.init, self.update))

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
        fields = type(self).__dataclass_fields__
        changes = {}
        for name in self._hyper_fields:
            value = getattr(self, name)
            if count is not None:
                value = resolve(value, count)
            if fields[name].metadata.get("kind") == "hyper" or not _is_key(value):
                require_scalar(owner, name, value)  # a constant may be a PRNG key's data
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


class _ProtocolType(type):
    """A type whose instances are the objects that follow a protocol, whatever their class."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return cls._follows(obj)  # type: ignore[attr-defined]

    def __subclasscheck__(cls, sub: type) -> bool:
        return type.__subclasscheck__(cls, sub) or issubclass(sub, Transformation)


class _GradientTransformation(metaclass=_ProtocolType):
    """The type of a gradient transformation, for annotations and `isinstance` (optax's name).

    Every gradxform transformation is an instance, and so is every object with callable
    `init` and `update`, such as an `optax.GradientTransformation` (checked without importing
    optax): `isinstance(gx.adam(1e-3), gx.GradientTransformation)` and
    `isinstance(optax.adam(1e-3), gx.GradientTransformation)` are both true.
    """

    init: Callable[..., Any]
    update: Callable[..., Any]

    @staticmethod
    def _follows(obj: Any) -> bool:
        return is_transformation(obj)


class _GradientTransformationExtraArgs(_GradientTransformation):
    """A `GradientTransformation` whose `update` takes extra keyword arguments (optax's name).

    Every gradxform transformation is one (its `update` takes `**extra_args` and passes each
    inner transformation those it accepts); another library's transformation is one when its
    `update` takes `**kwargs`, as optax's `GradientTransformationExtraArgs` do.
    """

    @staticmethod
    def _follows(obj: Any) -> bool:
        return isinstance(obj, Transformation) or (
            is_transformation(obj) and _takes_any_keyword(obj.update))


if TYPE_CHECKING:
    # To a type checker these are protocols: a gradxform transformation and an optax one both
    # match them by their `init` and `update`.
    class GradientTransformation(Protocol):
        def init(self, params: Params) -> OptState: ...

        def update(self, updates: Updates, state: OptState, params: Params | None = None
                   ) -> tuple[Updates, OptState]: ...

    class GradientTransformationExtraArgs(GradientTransformation, Protocol):
        def update(self, updates: Updates, state: OptState, params: Params | None = None,
                   **extra_args: Any) -> tuple[Updates, OptState]: ...
else:
    GradientTransformation = _GradientTransformation
    GradientTransformation.__name__ = GradientTransformation.__qualname__ = \
        "GradientTransformation"
    GradientTransformationExtraArgs = _GradientTransformationExtraArgs
    GradientTransformationExtraArgs.__name__ = GradientTransformationExtraArgs.__qualname__ = \
        "GradientTransformationExtraArgs"


def _takes_any_keyword(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def accepted_extra_args(update: Callable, extra_args: dict) -> dict:
    """The extra arguments that `update` accepts: all of them when it takes `**kwargs`, else
    those it names (optax's `with_extra_args_support` passes a plain transformation none)."""
    if not extra_args:
        return extra_args
    try:
        parameters = inspect.signature(update).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return extra_args
    named = {name for name, p in parameters.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in extra_args.items()
            if k in named and k not in ("updates", "state", "params")}


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


def adopt(value, where: str, what: str):
    """`value` as a gradxform transformation: itself, or `from_optax(value)` for a transformation
    of another library; a TypeError naming `what` (an argument of `where`) for anything else."""
    if isinstance(value, Transformation):
        return value
    require_transformation(value, where, what)
    return from_optax(value)


def _optax_name(tx) -> str:
    """`optax.adam` for the transformation built by `optax.adam(...)`, when that can be told."""
    qualname = getattr(getattr(tx, "init", None), "__qualname__", "")
    module = getattr(getattr(tx, "init", None), "__module__", "") or ""
    head = qualname.split(".<locals>")[0]
    if module.startswith("optax") and head and "<" not in head:
        return f"optax.{head}"
    return type(tx).__name__


@pytree_dataclass
class from_optax(Transformation):
    """An optax `GradientTransformation` used as a gradxform transformation.

        u_t, s_t = tx.update(g_t, s_{t-1}, θ_{t-1})        (optax's own rule, unchanged)

    Every gradxform combinator and wrapper applies it to an optax transformation it is given
    (`chain(optax.scale_by_lbfgs(), scale_by_learning_rate(0.1))`,
    `MultiSteps(optax.lamb(1e-3), 2)`), so writing it is rarely needed. The state is optax's
    state, untouched. Extra keyword arguments of `update` (e.g. `value` for optax's line
    searches) reach `tx` when its update accepts them, as `optax.with_extra_args_support` does.

    The optax transformation is static data: its hyperparameters are constants baked into its
    functions, so changing one builds a new `tx` and recompiles the step. To change them during
    training, build `tx` with `optax.inject_hyperparams`; `hyperparams(state)` then reads them
    from the state.

    Args:
      tx: an `optax.GradientTransformation` (any object with `init` and `update`).

    Returns:
      A transformation whose state is `tx`'s state.
    """

    tx: Any = static()

    def __post_init__(self):
        require_transformation(self.tx, "from_optax", "tx", "an optax.GradientTransformation")
        super().__post_init__()

    def init(self, params):
        return self.tx.init(params)

    def update(self, updates, state, params=None, **extra_args):
        return self.tx.update(updates, state, params,
                              **accepted_extra_args(self.tx.update, extra_args))

    def hyperparams(self, state) -> dict:
        """The values `optax.inject_hyperparams` keeps in the state (empty otherwise)."""
        return dict(getattr(state, "hyperparams", {}))

    def __repr__(self) -> str:
        return f"from_optax({_optax_name(self.tx)})"


def _is_key(value) -> bool:
    """Whether `value` is a PRNG key (typed, or raw uint32 key data): data, not a number."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
                                  or dtype == np.uint32)


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


def safe_int32_increment(count: jax.Array) -> jax.Array:
    """count + 1 for an int32 count, saturating at 2³¹ - 1 (optax's name for `safe_increment`)."""
    return safe_increment(count)


def init_empty_state(params: Params) -> EmptyState:
    """The `init` of a transformation that keeps no state: `EmptyState()` whatever the params."""
    del params
    return EmptyState()


def with_extra_args_support(tx: Any) -> Transformation:
    """`tx` as a transformation whose `update` takes extra keyword arguments (optax's name).

    Every gradxform transformation already takes them (`update(updates, state, params,
    **extra_args)`, each inner transformation receiving those it names), so one is returned as
    it is. Another library's transformation, such as an `optax.GradientTransformation`, is
    wrapped as `from_optax(tx)`, whose `update` passes `tx` only the extra arguments its update
    accepts, as `optax.with_extra_args_support` does.

    Args:
      tx: a transformation.

    Returns:
      `tx`, or `from_optax(tx)`.
    """
    return adopt(tx, "with_extra_args_support", "tx")
