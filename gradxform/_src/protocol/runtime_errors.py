"""Errors that depend on values known only when a step runs (the step count, a counter in the
state): raised at once when the value is concrete, and from the compiled step otherwise."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def _raise_if(message: str, flag: Any) -> None:
    # Under vmap the flag holds one entry per member of the batch: any of them fails the step.
    if np.any(np.asarray(flag)):
        raise ValueError(message)


def error_if(flag: Any, message: str) -> None:
    """Raises a ValueError with `message` when the boolean `flag` is true.

    A concrete flag (an eager step) raises here. A traced one (under jit) raises when the
    compiled step runs, as a `JaxRuntimeError` that carries the message: a host callback in the
    branch of a `lax.cond` that only a failing step takes, as `equinox.error_if` does, so a
    step that passes the check costs one comparison and a branch.
    """
    if not isinstance(flag, jax.core.Tracer):
        _raise_if(message, flag)
        return
    jax.lax.cond(flag.any(),
                 lambda f: jax.debug.callback(lambda x: _raise_if(message, x), f),
                 lambda f: None, flag)
