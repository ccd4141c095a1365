"""Wrappers that apply a transformation only at some steps (optax's conditionality wrappers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, static
from gradxform._src.protocol.transformation import Transformation, safe_increment, zero_count


def _condition(fn: Callable, step: jax.Array, extra_args: dict, forward: bool, where: str):
    cond = fn(step, **(extra_args if forward else {}))
    if jnp.shape(cond) != ():
        raise ValueError(f"{where}: should_transform_fn must return a scalar, got shape "
                         f"{jnp.shape(cond)}")
    return jnp.asarray(cond).astype(jnp.bool_)


class ConditionallyTransformState(NamedTuple):
    """`step`: the number of updates so far (the argument of `should_transform_fn`)."""

    inner_state: Any
    step: Any


@pytree_dataclass(positional=3)
class conditionally_transform(Transformation):
    """Applies `inner` at the steps where a condition holds, and passes the updates through
    unchanged (the inner state too) at the others.

        (u_t, s_t) = inner(g_t, s_{t-1})   if should_transform_fn(t),   else (g_t, s_{t-1})

    with t = 0, 1, ... the number of earlier updates. The branch is a `lax.cond`, so only the
    one taken runs.

    Args:
      inner: the transformation.
      should_transform_fn: `fn(step, **extra_args) -> bool`, a scalar.
      forward_extra_args: whether the extra arguments of `update` go to `should_transform_fn`
        too (they always go to `inner`).

    Returns:
      A transformation with state `ConditionallyTransformState(inner_state, step)`.

    References:
      optax.conditionally_transform; `conditionally_mask` gives zero updates instead.
    """

    inner: Transformation = child()
    should_transform_fn: Callable = static()
    forward_extra_args: bool = static(False)

    def init(self, params):
        return ConditionallyTransformState(inner_state=self.inner.init(params),
                                           step=zero_count())

    def update(self, updates, state, params=None, **extra_args):
        cond = _condition(self.should_transform_fn, state.step, extra_args,
                          self.forward_extra_args, "conditionally_transform")
        updates, inner_state = jax.lax.cond(
            cond,
            lambda _: self.inner.update(updates, state.inner_state, params, **extra_args),
            lambda _: (updates, state.inner_state),
            None,
        )
        return updates, ConditionallyTransformState(inner_state=inner_state,
                                                    step=safe_increment(state.step))

    def hyperparams(self, state) -> dict:
        return self.inner.hyperparams(state.inner_state)

    def _substates(self, state):
        return [(type(self.inner).__name__, self.inner, state.inner_state)]


class ConditionallyMaskState(NamedTuple):
    """`step`: the number of updates so far (the argument of `should_transform_fn`)."""

    step: Any
    inner_state: Any


@pytree_dataclass(positional=3)
class conditionally_mask(Transformation):
    """Applies `inner` at the steps where a condition holds, and gives zero updates (keeping
    the inner state) at the others.

        (u_t, s_t) = inner(g_t, s_{t-1})   if should_transform_fn(t),   else (0, s_{t-1})

    with t = 0, 1, ... the number of earlier updates. The branch is a `lax.cond`.

    Args:
      inner: the transformation.
      should_transform_fn: `fn(step, **extra_args) -> bool`, a scalar.
      forward_extra_args: whether the extra arguments of `update` go to `should_transform_fn`
        too (they always go to `inner`).

    Returns:
      A transformation with state `ConditionallyMaskState(step, inner_state)`.

    References:
      optax.conditionally_mask; `conditionally_transform` passes the updates through instead.
    """

    inner: Transformation = child()
    should_transform_fn: Callable = static()
    forward_extra_args: bool = static(False)

    def init(self, params):
        return ConditionallyMaskState(step=zero_count(), inner_state=self.inner.init(params))

    def update(self, updates, state, params=None, **extra_args):
        cond = _condition(self.should_transform_fn, state.step, extra_args,
                          self.forward_extra_args, "conditionally_mask")
        updates, inner_state = jax.lax.cond(
            cond,
            lambda _: self.inner.update(updates, state.inner_state, params, **extra_args),
            lambda _: (jax.tree.map(jnp.zeros_like, updates), state.inner_state),
            None,
        )
        return updates, ConditionallyMaskState(step=safe_increment(state.step),
                                               inner_state=inner_state)

    def hyperparams(self, state) -> dict:
        return self.inner.hyperparams(state.inner_state)

    def _substates(self, state):
        return [(type(self.inner).__name__, self.inner, state.inner_state)]
