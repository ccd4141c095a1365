"""Frozen dataclasses registered as JAX pytrees: the form of every transformation and schedule.

Numeric hyperparameters (floats, arrays, schedules) are pytree leaves, so changing one never
recompiles a jitted step and `jax.vmap` over them sweeps hyperparameters; structural options
(flags, dtypes, masks, callables) are static and key the jit cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

import jax
import numpy as np

from gradxform._src.protocol.fields import check_argument, validate_field
from gradxform._src.protocol.tree_check import checked_update

T = TypeVar("T")


def format_value(value) -> str:
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


def is_plain_callable(value) -> bool:
    # A schedule written as a Python function is not a pytree: it travels as static data.
    return callable(value) and not isinstance(value, PytreeDataclass)


class PytreeDataclass:
    """Base of frozen dataclasses registered as JAX pytrees (transformations and schedules).

    Subclasses are declared with `@pytree_dataclass`. Fields made with `hyperparameter(...)`,
    `constant(...)` and `child(...)` are pytree children; fields made with `static(...)` are
    static data.
    """

    _hyper_fields: ClassVar[tuple[str, ...]] = ()
    _child_fields: ClassVar[tuple[str, ...]] = ()
    _static_fields: ClassVar[tuple[str, ...]] = ()
    _pytree_class: ClassVar[type | None] = None

    if TYPE_CHECKING:
        # `pytree_dataclass` makes each subclass a dataclass and generates its constructor from
        # the annotated fields, marking keyword-only ones at run time where a type checker
        # cannot see them: to the checker, it takes any arguments.
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

        def __init__(self, *args: Any, **kwargs: Any) -> None: ...

    def __new__(cls, *args: Any, **kwargs: Any):
        # Rebuilding from leaves (`_tree_unflatten`, `_replace`) calls object.__new__ directly.
        if cls.__dict__.get("_pytree_class") is not cls:
            raise TypeError(
                f"{cls.__name__}: decorate the class with @gradxform.pytree_dataclass (it makes "
                f"the class a frozen dataclass of its fields, registered as a JAX pytree, so an "
                f"instance can be passed to jax.jit and its hyperparameters are leaves)"
            )
        return super().__new__(cls)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            if f.metadata.get("kind") == "static" and f.metadata.get("check") is not None:
                check_argument(owner, f.name, getattr(self, f.name), f.metadata["check"])
            elif f.metadata.get("kind") in ("hyper", "constant"):
                validate_field(owner, f.name, getattr(self, f.name), f.metadata.get("check"),
                               f.default, schedulable=f.metadata["kind"] == "hyper")
        self._validate()

    def _validate(self) -> None:
        """Extra checks across fields; runs at construction only (never on unflatten)."""

    # Pytree protocol -----------------------------------------------------------------------------
    def _tree_flatten_with_keys(self):
        dynamic, held_static = [], []
        for name in self._hyper_fields:
            value = getattr(self, name)
            if is_plain_callable(value):
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

    def _repr_parts(self) -> list[tuple[str, Any]]:
        """(prefix, value) per argument of the recipe: `name=` and the field's value, with
        options at their defaults and optional hyperparameters left out. A class whose
        constructor takes its arguments otherwise (`chain(*transforms)`) overrides this."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = f.metadata.get("kind")
            if kind == "static" and f.default is not dataclasses.MISSING and value == f.default:
                continue
            if kind in ("hyper", "constant") and value is None and f.default is None:
                continue  # an optional hyperparameter left out
            parts.append((f"{f.name}=", value))
        return parts

    def __repr__(self) -> str:
        return format_recipe(self)


REPR_WIDTH = 100


def _inline(value) -> str:
    if isinstance(value, PytreeDataclass) and type(value).__repr__ is PytreeDataclass.__repr__:
        inner = ", ".join(prefix + _inline(v) for prefix, v in value._repr_parts())
        return f"{type(value).__name__}({inner})"
    if type(value) is tuple and any(isinstance(v, PytreeDataclass) for v in value):
        inner = ", ".join(_inline(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if type(value) is dict and any(isinstance(v, PytreeDataclass) for v in value.values()):
        return "{" + ", ".join(f"{k!r}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, PytreeDataclass):
        return repr(value)
    return format_value(value)


def _is_combinator(value) -> bool:
    """A transformation holding other transformations (chain, partition, a wrapper)."""
    return (isinstance(value, PytreeDataclass) and bool(value._child_fields)
            and callable(getattr(value, "update", None))
            and type(value).__repr__ is PytreeDataclass.__repr__)


def _holds_combinator(value) -> bool:
    children = [v for name in value._child_fields for v in jax.tree_util.tree_leaves(
        getattr(value, name), is_leaf=lambda x: isinstance(x, PytreeDataclass))]
    return any(_is_combinator(v) for v in children)


def format_recipe(value, indent: int = 0, column: int | None = None, *,
                  nested: bool = False) -> str:
    """The recipe of a transformation or schedule, as its `repr`.

    One line when it fits in REPR_WIDTH columns. Otherwise a combinator (a chain, partition or
    wrapper) that is nested in another or holds one is written one argument per line, nested
    recipes indented by four spaces; primitives and schedules stay on one line, and so does a
    chain of primitives on its own (`adamw(...)`'s recipe). Either form evaluates, with
    gradxform's names in scope, to an equal object.

    `indent` is the indentation of the lines the value continues on, `column` where its first
    line starts (default: `indent`).
    """
    line = _inline(value)
    if (indent if column is None else column) + len(line) <= REPR_WIDTH:
        return line
    inner = indent + 4
    if _is_combinator(value) and (nested or _holds_combinator(value)):
        items = [prefix + format_recipe(v, inner, inner + len(prefix), nested=True)
                 for prefix, v in value._repr_parts()]
        opening = f"{type(value).__name__}("
        closing = ")"
    elif nested and type(value) is tuple and any(isinstance(v, PytreeDataclass) for v in value):
        items = [format_recipe(v, inner, nested=True) for v in value]
        opening, closing = "(", ")"
    elif nested and type(value) is dict and any(isinstance(v, PytreeDataclass)
                                                for v in value.values()):
        items = [f"{k!r}: " + format_recipe(v, inner, inner + len(repr(k)) + 2, nested=True)
                 for k, v in value.items()]
        opening, closing = "{", "}"
    else:
        return line
    body = "".join(f"{' ' * inner}{item},\n" for item in items)
    return f"{opening}\n{body}{' ' * indent}{closing}"


@overload
def pytree_dataclass(cls: type[T], *, positional: int = 1) -> type[T]: ...


@overload
def pytree_dataclass(cls: None = None, *, positional: int = 1) -> Callable[[type[T]], type[T]]: ...


def pytree_dataclass(cls: Any = None, *, positional: int = 1) -> Any:
    """Makes `cls` a frozen dataclass registered as a pytree with keyed paths.

    The first `positional` fields may be given by position; the others are keyword-only. One by
    default (a transformation's hyperparameters are keyword-only after the first); schedules
    that keep optax's signatures use `@pytree_dataclass(positional=k)`.

    For a transformation (a class with `init` and `update`), the `update` it defines or inherits
    is wrapped with `tree_check.checked_update`: the outermost `update` of a step checks the
    trees it is given and names the first mismatch (see `gradxform._src.protocol.tree_check`).
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
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with hyperparameter(), "
                            f"constant(), static() or child()")
        # A constant is a numeric leaf like a hyperparameter; only its validation differs.
        kinds["hyper" if kind == "constant" else kind].append(f.name)
    cls._pytree_class = cls
    cls._hyper_fields = tuple(kinds["hyper"])
    cls._child_fields = tuple(kinds["child"])
    cls._static_fields = tuple(kinds["static"])
    jax.tree_util.register_pytree_with_keys(
        cls, cls._tree_flatten_with_keys, cls._tree_unflatten
    )
    if callable(getattr(cls, "init", None)) and callable(getattr(cls, "update", None)):
        cls.update = checked_update(cls.update)
    return cls
