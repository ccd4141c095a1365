"""Field kinds of a transformation or schedule, and the validation of their concrete values.

- `hyperparameter`: a numeric hyperparameter, a pytree leaf: a float, an array or a schedule of
  the step count.
- `constant`: a number that is a pytree leaf (changing it does not recompile) but may not be a
  schedule, for transformations that keep no step count to evaluate one at, or that use the
  value where a schedule cannot stand.
- `static`: a structural option (flag, dtype, mask, callable, size), static data that keys the
  jit cache.
- `child`: a field holding other transformations, pytree children.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def hyperparameter(default: Any = dataclasses.MISSING, *, check: Callable | None = None) -> Any:
    """Declares a numeric hyperparameter: a pytree leaf that may be a float, an array or a schedule.

    `check(value) -> str | None` validates a concrete value at construction and returns a
    description of the allowed range when the value is outside it.
    """
    return dataclasses.field(default=default, metadata={"kind": "hyper", "check": check})


def constant(default: Any = dataclasses.MISSING, *, check: Callable | None = None) -> Any:
    """Declares a number that is a pytree leaf but may not be a schedule (or any callable).

    Like `hyperparameter` (a float or an array; changing it reuses the compiled step; `check`
    validates concrete values), for a transformation that has no step count to evaluate a
    schedule at. A schedule given here is refused when the transformation is built.
    """
    return dataclasses.field(default=default, metadata={"kind": "constant", "check": check})


def static(default: Any = dataclasses.MISSING, *, check: Callable | None = None) -> Any:
    """Declares a structural option: part of the pytree's static data (must be hashable)."""
    return dataclasses.field(default=default, metadata={"kind": "static", "check": check})


def child(default: Any = dataclasses.MISSING) -> Any:
    """Declares a field holding other transformations (or a tuple of them): pytree children."""
    return dataclasses.field(default=default, metadata={"kind": "child", "check": None})


# -- checks used by `hyperparameter(check=...)`, `constant(check=...)` and `static(check=...)` --


def in_interval(lo: float, hi: float, closed: str = "[)") -> Callable:
    """A check that a value lies in an interval, e.g. ``in_interval(0, 1, "[)")`` for [0, 1)."""
    left, right = closed[0], closed[-1]

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


def or_infinity(check: Callable) -> Callable:
    """`check` that also admits +inf, for a number where infinity means "no limit" (a line
    search's curvature tolerance or growth factor); NaN and -inf stay refused."""

    def extended(x):
        return None if x == math.inf else check(x)

    extended.admits_infinity = True  # type: ignore[attr-defined]
    return extended


def integer_at_least(lo: int) -> Callable:
    """A check that a value is an integer >= `lo` (a Python or NumPy int, or an integer array;
    not a bool, not a float such as 2.0): for step counts, periods and sizes.

    Usable as `static(..., check=...)` and `hyperparameter(..., check=...)`.
    """

    def check(x):
        whole = isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)
        return None if whole and x >= lo else f"an integer >= {lo}"

    return check


def check_argument(owner: str, name: str, value, check: Callable) -> None:
    """Raises a ValueError `owner: name must be <allowed>, got <value>` when `check(value)`
    describes what is allowed (for arguments of functions, and `static(..., check=...)`)."""
    problem = check(value)
    if problem is not None:
        raise ValueError(f"{owner}: {name} must be {problem}, got {value!r}")


def concrete_values(value) -> list[float | int] | None:
    """The values of a concrete number or array as Python numbers (ints stay ints), or None for
    anything else (traced values, schedules, bools)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return [int(value)]
    if isinstance(value, numbers.Real):
        return [float(value)]
    if isinstance(value, np.ndarray | np.generic) and value.dtype.kind in "fiu":
        return np.ravel(value).tolist()
    if isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        try:
            if value.is_fully_addressable and jnp.issubdtype(value.dtype, jnp.number):
                return np.ravel(np.asarray(value)).real.tolist()
        except Exception:  # deleted or donated buffers: nothing to check
            return None
    return None


def validate_field(owner: str, name: str, value, check: Callable | None,
                   default: Any = None, *, schedulable: bool = True) -> None:
    """Validates the value of a `hyperparameter` (or, with `schedulable=False`, a `constant`)."""
    # A string, or None for a hyperparameter without a default, would only fail later, inside
    # the step, with a message about arrays; say here which argument is wrong. (None stays
    # allowed where a default exists: it may mean "off", as a clipping threshold of None.)
    allowed = "a number, an array or a schedule" if schedulable else "a number or an array"
    if isinstance(value, str | bytes) or (value is None and default is dataclasses.MISSING):
        raise TypeError(f"{owner}: {name} must be {allowed}, got {value!r}")
    if isinstance(value, bool | np.bool_) or (
            isinstance(value, np.ndarray | jax.Array) and value.dtype == np.bool_):
        # True would be taken as 1 (a learning rate of 1.0): say so rather than train with it.
        raise TypeError(f"{owner}: {name} must be {allowed}, got {value!r} (a bool, not a "
                        f"number; flags of a transformation are its static options)")
    if not schedulable and callable(value):
        raise TypeError(
            f"{owner}: {name} must be {allowed}, got {value!r}; {name} is a constant of "
            f"{owner} and cannot be scheduled (build the transformation again to change it)"
        )
    if check is not None and callable(getattr(value, "end_values", None)):
        _validate_schedule(owner, name, value, check)
        return
    values = concrete_values(value)
    if values is None:
        return
    for v in values:
        admitted_infinity = v == math.inf and getattr(check, "admits_infinity", False)
        if not math.isfinite(v) and not admitted_infinity:
            raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
        if check is not None:
            allowed = check(v)
            if allowed is not None:
                raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


def _validate_schedule(owner: str, name: str, schedule, check: Callable) -> None:
    """Checks the end points of a concrete schedule given to a field against its range: a
    learning rate of `linear_schedule(1e-3, -1e-3, 10)` would turn negative after 10 steps."""
    for what, end in schedule.end_values():
        for v in concrete_values(end) or ():
            allowed = check(v) if math.isfinite(v) else None
            if allowed is not None:
                raise ValueError(f"{owner}: {name} must be {allowed}, got {schedule!r}, whose "
                                 f"{what} is {v!r}")


def dtype_option(x) -> str | None:
    """A check that an option is None or names a floating-point or complex dtype, for the
    dtypes in which a transformation stores its buffers (`mu_dtype`, `accumulator_dtype`)."""
    if x is None:
        return None
    try:
        ok = jnp.issubdtype(jnp.dtype(x), jnp.inexact)
    except TypeError:
        ok = False
    return None if ok else ("None or a floating-point dtype (jnp.float32, jnp.bfloat16, "
                            "'bfloat16', 'float16', ...)")
