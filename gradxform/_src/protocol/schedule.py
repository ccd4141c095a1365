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


class Schedule(PytreeDataclass):
    """A map from the step count (an int32 array) to a value; subclasses define `__call__`."""

    def __call__(self, count: jax.Array) -> jax.Array:
        raise NotImplementedError

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
