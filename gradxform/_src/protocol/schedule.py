"""Schedules: maps from the step count to a value, usable wherever a number is."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradxform._src.protocol.dataclass import PytreeDataclass, is_plain_callable

# A numeric hyperparameter: a number, an array (a traced value, a vmapped sweep) or a schedule, a
# map from the step count to the value.
ScalarOrSchedule = ArrayLike | Callable[[jax.Array], ArrayLike]


# A count past the end of any schedule in use (about 10⁹ steps), below the int32 maximum so
# that a schedule's own arithmetic on the count (count + 1) cannot overflow.
LATE_COUNT = 2**30


class Schedule(PytreeDataclass):
    """A map from the step count (an int32 array) to a value; subclasses define `__call__`."""

    def __call__(self, count: jax.Array) -> jax.Array:
        raise NotImplementedError

    def end_values(self) -> list[tuple[str, Any]]:
        """The values at step 0 and long after the end (step 2**30), each with a description,
        when the schedule's numbers are concrete (otherwise traced values, or nothing).

        A transformation checks them against the range of the field the schedule is given to.
        """
        out = []
        with jax.ensure_compile_time_eval():
            for what, count in [("value at step 0", 0), ("final value", LATE_COUNT)]:
                try:
                    out.append((what, self(jnp.asarray(count, jnp.int32))))
                except Exception:  # a schedule that cannot run eagerly: nothing to check
                    return []
        return out

    def values(self, num_steps: int, *, start: int = 0) -> jax.Array:
        """The schedule at steps start, start + 1, ..., start + num_steps - 1, as one array."""
        if (not isinstance(num_steps, numbers.Integral) or isinstance(num_steps, bool)
                or num_steps < 0):
            raise ValueError(f"values: num_steps must be an integer >= 0, got {num_steps!r}")
        counts = jnp.arange(start, start + num_steps, dtype=jnp.int32)
        return jax.vmap(self)(counts)


def resolve(value: Any, count: ArrayLike | None) -> Any:
    """The value of a hyperparameter at step `count`: schedules are called, numbers pass through."""
    if isinstance(value, Schedule) or is_plain_callable(value):
        return value(count)
    return value


SWEEP_IDIOM = (
    "in_axes = jax.tree.map(lambda leaf: 0 if jnp.ndim(leaf) else None, opt); "
    "jax.vmap(train, in_axes=(in_axes,))(opt)"
)


def require_scalar(owner: str, name: str, value: Any) -> None:
    """Raises a ValueError when a resolved hyperparameter is not a scalar.

    One step uses one value of each hyperparameter. An array of values is a sweep, and a sweep
    is a `jax.vmap` over the optimizer, inside which the batched leaf is a scalar; applied
    without vmap, the array would broadcast against the leaves (one learning rate per column,
    or an update of the array's shape for a scalar param) without a word.
    """
    shape = getattr(value, "shape", None)
    if shape is None or tuple(shape) == ():
        return
    raise ValueError(
        f"{owner}: {name} must be a scalar at each step, got an array of shape "
        f"{tuple(shape)}. An array of values is a sweep: vmap over the optimizer, so that each "
        f"copy sees one value ({SWEEP_IDIOM}), or build the optimizer inside the vmapped "
        f"function, jax.vmap(lambda v: train(...v...))(values)"
    )
