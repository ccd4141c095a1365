"""The transformation protocol: transformations and schedules are frozen pytree dataclasses.

A transformation is data. Its numeric hyperparameters (floats, arrays, schedules) are pytree
leaves, so changing one never recompiles a jitted step and `jax.vmap` over them sweeps
hyperparameters; its structural options (flags, dtypes, masks, callables) are static and key
the jit cache.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import threading
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _tree

Params = Any
Updates = Any
OptState = Any

INT32_MAX = np.iinfo(np.int32).max


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""


def hyperparameter(default: Any = dataclasses.MISSING, *, check: Callable | None = None) -> Any:
    """Declares a numeric hyperparameter: a pytree leaf that may be a float, an array or a schedule.

    `check(value) -> str | None` validates a concrete value at construction and returns a
    description of the allowed range when the value is outside it.
    """
    return dataclasses.field(default=default, metadata={"kind": "hyper", "check": check})


def static(default: Any = dataclasses.MISSING, *, check: Callable | None = None) -> Any:
    """Declares a structural option: part of the pytree's static data (must be hashable)."""
    return dataclasses.field(default=default, metadata={"kind": "static", "check": check})


def child(default: Any = dataclasses.MISSING) -> Any:
    """Declares a field holding other transformations (or a tuple of them): pytree children."""
    return dataclasses.field(default=default, metadata={"kind": "child", "check": None})


# -- range checks used by `hyperparameter(check=...)` ---------------------------------------------


def in_interval(lo: float, hi: float, closed: str = "[)") -> Callable:
    """A check that a value lies in an interval, e.g. ``in_interval(0, 1, "[)")`` for [0, 1)."""
    left, right = closed

    def check(x):
        ok = (x >= lo if left == "[" else x > lo) and (x <= hi if right == "]" else x < hi)
        return None if ok else f"in {left}{lo}, {hi}{right}"

    return check


def non_negative(x):
    return None if x >= 0 else ">= 0"


def positive(x):
    return None if x > 0 else "> 0"


def finite(x):
    return None if math.isfinite(x) else "finite"


def _concrete_values(value) -> list[float] | None:
    """The values of a concrete number or array as Python floats, or None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return [float(value)]
    if isinstance(value, np.ndarray | np.generic) and value.dtype.kind in "fiu":
        return [float(v) for v in np.ravel(value)]
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        try:
            if value.is_fully_addressable and jnp.issubdtype(value.dtype, jnp.number):
                return [float(v) for v in np.ravel(np.asarray(value)).real]
        except Exception:  # deleted or donated buffers: nothing to check
            return None
    return None


def _validate_field(owner: str, name: str, value, check: Callable | None,
                    default: Any = None) -> None:
    # A string, or None for a hyperparameter without a default, would only fail later, inside
    # the step, with a message about arrays; say here which argument is wrong. (None stays
    # allowed where a default exists: it may mean "off", as a clipping threshold of None.)
    if isinstance(value, str | bytes) or (value is None and default is dataclasses.MISSING):
        raise TypeError(
            f"{owner}: {name} must be a number, an array or a schedule, got {value!r}"
        )
    values = _concrete_values(value)
    if values is None:
        return
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
        if check is not None:
            allowed = check(v)
            if allowed is not None:
                raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


# -- pytree dataclasses ---------------------------------------------------------------------------


def _format_value(value) -> str:
    if isinstance(value, jax.core.Tracer):
        return f"<traced {value.dtype}{list(value.shape)}>"
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        if np.ndim(value) == 0:
            try:
                return repr(np.asarray(value).item())
            except Exception:
                return f"<{value.dtype}[]>"
        return f"<{value.dtype}{list(np.shape(value))}>"
    if isinstance(value, type) or isinstance(value, np.dtype):
        return np.dtype(value).name
    return repr(value)


def _is_plain_callable(value) -> bool:
    # A schedule written as a Python function is not a pytree: it travels as static data.
    return callable(value) and not isinstance(value, PytreeDataclass)


class PytreeDataclass:
    """Base of frozen dataclasses registered as JAX pytrees (transformations and schedules).

    Subclasses are declared with `@pytree_dataclass`. Fields made with `hyperparameter(...)` and
    `child(...)` are pytree children; fields made with `static(...)` are static data.
    """

    _hyper_fields: ClassVar[tuple[str, ...]] = ()
    _child_fields: ClassVar[tuple[str, ...]] = ()
    _static_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            if f.metadata.get("kind") == "static" and f.metadata.get("check") is not None:
                problem = f.metadata["check"](getattr(self, f.name))
                if problem is not None:
                    value = getattr(self, f.name)
                    raise ValueError(f"{owner}: {f.name} must be {problem}, got {value!r}")
            elif f.metadata.get("kind") == "hyper":
                _validate_field(owner, f.name, getattr(self, f.name), f.metadata.get("check"),
                                f.default)
        self._validate()

    def _validate(self) -> None:
        """Extra checks across fields; runs at construction only (never on unflatten)."""

    # Pytree protocol -----------------------------------------------------------------------------
    def _tree_flatten_with_keys(self):
        dynamic, held_static = [], []
        for name in self._hyper_fields:
            value = getattr(self, name)
            if _is_plain_callable(value):
                held_static.append((name, value))
            else:
                dynamic.append((jax.tree_util.GetAttrKey(name), value))
        for name in self._child_fields:
            dynamic.append((jax.tree_util.GetAttrKey(name), getattr(self, name)))
        aux = (
            tuple(k.name for k, _ in dynamic),
            tuple(held_static),
            tuple((name, getattr(self, name)) for name in self._static_fields),
        )
        return dynamic, aux

    @classmethod
    def _tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        names, held_static, statics = aux
        for name, value in zip(names, children, strict=True):
            object.__setattr__(obj, name, value)
        for name, value in held_static + statics:
            object.__setattr__(obj, name, value)
        return obj

    def _replace(self, **changes):
        """A copy with some fields changed, without validation (used for resolved values)."""
        obj = object.__new__(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(obj, f.name, changes.get(f.name, getattr(self, f.name)))
        return obj

    # Value semantics ---------------------------------------------------------------------------
    def __eq__(self, other) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        leaves_a, tree_a = jax.tree_util.tree_flatten(self)
        leaves_b, tree_b = jax.tree_util.tree_flatten(other)
        if tree_a != tree_b:
            return False
        for a, b in zip(leaves_a, leaves_b, strict=True):
            if a is b:
                continue
            if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
                return False
            if np.shape(a) != np.shape(b) or not np.array_equal(np.asarray(a), np.asarray(b)):
                return False
        return True

    def __hash__(self) -> int:
        return hash(jax.tree_util.tree_structure(self))

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.metadata.get("kind")
            if kind == "static" and f.default is not dataclasses.MISSING and value == f.default:
                continue
            if kind == "hyper" and value is None and f.default is None:
                continue  # an optional hyperparameter left out
            parts.append(f"{f.name}={_format_value(value)}")
        return f"{type(self).__name__}({', '.join(parts)})"


def pytree_dataclass(cls=None, *, positional: int = 1):
    """Makes `cls` a frozen dataclass registered as a pytree with keyed paths.

    The first `positional` fields may be given by position; the others are keyword-only. One by
    default (a transformation's hyperparameters are keyword-only after the first); schedules
    that keep optax's signatures use `@pytree_dataclass(positional=k)`.
    """
    if cls is None:
        return lambda c: pytree_dataclass(c, positional=positional)
    for name in list(cls.__dict__.get("__annotations__", {}))[positional:]:
        f = cls.__dict__.get(name)
        if isinstance(f, dataclasses.Field):
            f.kw_only = True
    cls = dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
    kinds: dict[str, list[str]] = {"hyper": [], "child": [], "static": []}
    for f in dataclasses.fields(cls):
        kind = f.metadata.get("kind")
        if kind is None:
            raise TypeError(
                f"{cls.__name__}.{f.name}: declare it with hyperparameter(), static() or child()"
            )
        kinds[kind].append(f.name)
    cls._hyper_fields = tuple(kinds["hyper"])
    cls._child_fields = tuple(kinds["child"])
    cls._static_fields = tuple(kinds["static"])
    jax.tree_util.register_pytree_with_keys(
        cls, cls._tree_flatten_with_keys, cls._tree_unflatten
    )
    return cls


# -- schedules ------------------------------------------------------------------------------------


class Schedule(PytreeDataclass):
    """A map from the step count (an int32 array) to a value; subclasses define `__call__`."""

    def __call__(self, count):
        raise NotImplementedError

    def values(self, num_steps: int, *, start: int = 0):
        """The schedule at steps start, start + 1, ..., start + num_steps - 1, as one array."""
        if (not isinstance(num_steps, numbers.Integral) or isinstance(num_steps, bool)
                or num_steps < 0):
            raise ValueError(f"values: num_steps must be an integer >= 0, got {num_steps!r}")
        counts = jnp.arange(start, start + num_steps, dtype=jnp.int32)
        return jax.vmap(self)(counts)


def resolve(value, count):
    """The value of a hyperparameter at step `count`: schedules are called, numbers pass through."""
    if isinstance(value, Schedule) or _is_plain_callable(value):
        return value(count)
    return value


# -- transformations ------------------------------------------------------------------------------

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

    def update(self, updates: Updates, state: OptState, params: Params | None = None, **extra_args):
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
    _tree.check_inexact(updates, f"{name}.update", "updates")
    if params is not None:
        _tree.check_same_structure(updates, params, f"{name}.update", "updates", "params")
        _tree.check_inexact(params, f"{name}.update", "params")
    expected, expected_leaves = _expected_state_structure(transformation, updates)
    actual = jax.tree_util.tree_structure(state)
    hint = None
    if actual != expected:
        hint = _tree.first_difference_of_structures(
            jax.tree_util.tree_unflatten(expected, [0] * expected.num_leaves), state
        )
    else:
        for (path, want), have in zip(expected_leaves, jax.tree_util.tree_leaves(state)):
            if jnp.shape(have) != want.shape:
                hint = (f"state leaf '{_tree.path_str(path)}' has shape {jnp.shape(have)}, "
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


def safe_increment(count):
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
