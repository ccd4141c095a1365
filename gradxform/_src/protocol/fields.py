"""Field kinds of a transformation or schedule, and the validation of their concrete values.

A numeric hyperparameter (`hyperparameter`) is a pytree leaf: a float, an array or a schedule.
A structural option (`static`) is static data that keys the jit cache. A field holding other
transformations (`child`) is a pytree child.
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


def static(default: Any = dataclasses.MISSING, *, check: Callable | None = None) -> Any:
    """Declares a structural option: part of the pytree's static data (must be hashable)."""
    return dataclasses.field(default=default, metadata={"kind": "static", "check": check})


def child(default: Any = dataclasses.MISSING) -> Any:
    """Declares a field holding other transformations (or a tuple of them): pytree children."""
    return dataclasses.field(default=default, metadata={"kind": "child", "check": None})


# -- range checks used by `hyperparameter(check=...)` ---------------------------------------------


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


def concrete_values(value) -> list[float] | None:
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


def validate_field(owner: str, name: str, value, check: Callable | None,
                    default: Any = None) -> None:
    # A string, or None for a hyperparameter without a default, would only fail later, inside
    # the step, with a message about arrays; say here which argument is wrong. (None stays
    # allowed where a default exists: it may mean "off", as a clipping threshold of None.)
    if isinstance(value, str | bytes) or (value is None and default is dataclasses.MISSING):
        raise TypeError(
            f"{owner}: {name} must be a number, an array or a schedule, got {value!r}"
        )
    values = concrete_values(value)
    if values is None:
        return
    for v in values:
        if not math.isfinite(v):
            raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
        if check is not None:
            allowed = check(v)
            if allowed is not None:
                raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")
