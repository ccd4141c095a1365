"""What every schedule shares: field declarations, range checks and the step count as a float."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import concrete_values, static
from gradxform._src.protocol.schedule import Schedule


def whole_steps(x) -> str | None:
    return None if x >= 0 and float(x).is_integer() else "a whole number of steps >= 0"


def positive_steps(x) -> str | None:
    return None if x > 0 and float(x).is_integer() else "a whole number of steps > 0"


def one_of(*choices: str | None) -> Callable:
    def check(x):
        return None if x in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def steps(default: Any = dataclasses.MISSING, *, positive: bool = False) -> Any:
    """A step count: a pytree leaf (changing it does not recompile), a whole number >= 0 (> 0)."""
    check = positive_steps if positive else whole_steps
    return dataclasses.field(default=default, metadata={"kind": "hyper", "check": check, "as": int})


def value(default: Any = dataclasses.MISSING, *, check: Callable | None = None) -> Any:
    """A value of the schedule (a learning rate, a factor): a pytree leaf, a float or an array."""
    return dataclasses.field(
        default=default, metadata={"kind": "hyper", "check": check, "as": float}
    )


class ScheduleBase(Schedule):
    """A schedule whose Python-number fields are normalised, so the jit cache sees one type.

    Under jit a Python int is an int32 and a float a float32: `init_value=0` and `init_value=0.0`
    would compile twice. Values become floats and whole-number step counts become ints.
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            kind, v = f.metadata.get("as"), getattr(self, f.name)
            if kind is None or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if kind is int and isinstance(v, float) and v.is_integer():
                object.__setattr__(self, f.name, int(v))
            elif kind is float and isinstance(v, int):
                object.__setattr__(self, f.name, float(v))
        super().__post_init__()


def step_tuple(xs) -> tuple:
    """A sequence of step counts as a tuple, Python and NumPy whole numbers as ints."""
    out = []
    for x in xs:
        if isinstance(x, numbers.Integral) and not isinstance(x, bool):
            x = int(x)
        elif isinstance(x, float | np.floating) and float(x).is_integer():
            x = int(x)
        out.append(x)
    return tuple(out)


def concrete(x) -> np.ndarray | None:
    """`x` as a float64 array when it is a concrete number or array; None when traced."""
    if concrete_values(x) is None:
        return None
    return np.asarray(x, dtype=np.float64)


def require(owner: str, condition_holds: bool, message: str) -> None:
    if not condition_holds:
        raise ValueError(f"{owner}: {message}")


def as_float(count):
    """The step count in the default float dtype (explicit, so strict dtype promotion holds)."""
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.floating):
        return count
    return count.astype(jnp.result_type(float))


def safe_divisor(n):
    """`n`, or 1 where `n` <= 0: the branch it feeds is discarded there by a `where`."""
    return jnp.maximum(n, 1)


@pytree_dataclass
class function_schedule(Schedule):
    """A schedule written as a Python function (e.g. an optax schedule), held as static data.

        η_t = fn(t)

    Changing the function recompiles; its numbers are closure constants, not leaves.
    `join_schedules` wraps the Python functions it is given in one.

    Args:
      fn: the function of the step count (jax-traceable).

    Returns:
      A schedule of the step count, with `values` like any other.
    """

    fn: Callable = static()

    def end_values(self):
        return []  # a Python function is not called before the step runs it

    def __call__(self, count):
        return self.fn(count)

    def __repr__(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)
