"""Wrappers around a whole optimizer: gradient accumulation and skipping non-finite steps.

`apply_every` accumulates updates instead, as optax's namesake.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import (
    child,
    constant,
    dtype_option,
    hyperparameter,
    integer_at_least,
    static,
)
from gradxform._src.protocol.transformation import (
    Params,
    Transformation,
    Updates,
    safe_increment,
    zero_count,
)


def _zeros_of_output(fn, *args):
    """Zeros shaped like the first output of `fn(*args)`, found without running it."""
    shapes = jax.eval_shape(lambda *a: fn(*a)[0], *args)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _all_finite(tree):
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return functools.reduce(jnp.logical_and, flags, jnp.asarray(True))


# -- gradient accumulation ------------------------------------------------------------------------


def skip_not_finite(updates: Updates, gradient_step: jax.Array,
                    params: Params | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A `MultiSteps` skip rule: skip a micro-batch whose gradients hold an inf or a NaN.

    Returns:
      (should_skip, {"should_skip": ..., "num_not_finite": ...}).
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(x)).astype(jnp.int32)
              for x in jax.tree_util.tree_leaves(updates)]
    num = functools.reduce(jnp.add, counts, jnp.zeros([], jnp.int32))
    return num > 0, {"should_skip": num > 0, "num_not_finite": num}


def skip_large_updates(updates: Updates, gradient_step: jax.Array, params: Params | None,
                       max_squared_norm: ArrayLike) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A `MultiSteps` skip rule: skip a micro-batch with ‖g‖² ≥ max_squared_norm (or NaN).

    Use as `functools.partial(skip_large_updates, max_squared_norm=...)`.

    Returns:
      (should_skip, {"should_skip": ..., "norm_squared": ...}).
    """
    del gradient_step, params
    sq = [jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(updates)]
    norm_sq = functools.reduce(jnp.add, sq, jnp.zeros([], jnp.float32))
    should_skip = jnp.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


class MultiStepsState(NamedTuple):
    """`mini_step` counts micro-batches since the last step, `gradient_step` the steps taken."""

    mini_step: Any
    gradient_step: Any
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()

    @property
    def count(self):
        """The step count that schedules read: `gradient_step`."""
        return self.gradient_step


@pytree_dataclass(positional=5)
class MultiSteps(Transformation):
    """Gradient accumulation: one step of `opt` per k micro-batches, on their mean (or sum).

        ḡ_n = ḡ_{n-1} + (g_n - ḡ_{n-1}) / n       (mean, Welford's update; n = 1..k)
        ḡ_n = ḡ_{n-1} + g_n                       (sum, `use_grad_mean=False`)
        u = opt(ḡ_k) at the k-th micro-batch, u = 0 at the others

    With equal-size micro-batches and a mean loss, the mean over k micro-batches is the gradient
    of the k-times larger batch, so the step equals the big-batch step. The inner update runs
    under `lax.cond`, only at the k-th micro-batch.

    Args:
      opt: the optimizer to step.
      every_k_schedule: k ≥ 1 micro-batches per step, an int or a schedule of the step count
        (to grow the batch during training).
      use_grad_mean: average the micro-batch gradients (True) or sum them.
      should_skip_update_fn: `fn(updates, gradient_step, params) -> (bool, info)`; a skipped
        micro-batch leaves the state as it was (e.g. `skip_not_finite`), `info` goes to
        `state.skip_state`.
      accumulator_dtype: dtype of the running mean (default: the params' dtype, float32 for
        16-bit params; optax defaults to float32).

    Returns:
      A transformation with state `MultiStepsState`.

    References:
      optax.MultiSteps.
    """

    opt: Transformation = child()
    every_k_schedule: int = hyperparameter(check=integer_at_least(1))
    use_grad_mean: bool = static(True)
    should_skip_update_fn: Callable | None = static(None)
    accumulator_dtype: Any = static(None, check=dtype_option)

    @property
    def inner_opt(self):
        return self.opt

    def init(self, params):
        gradient_step = zero_count()
        skip_state = ()
        if self.should_skip_update_fn is not None:
            zeros = jax.tree.map(jnp.zeros_like, params)
            _, skip_state = self.should_skip_update_fn(zeros, gradient_step, params)
        return MultiStepsState(
            mini_step=zero_count(),
            gradient_step=gradient_step,
            inner_opt_state=self.opt.init(params),
            acc_grads=tree_utils.zeros_like(params, self.accumulator_dtype),
            skip_state=skip_state,
        )

    def update(self, updates, state, params=None, **extra_args):
        k = jnp.asarray(self.at(state.gradient_step).every_k_schedule).astype(jnp.int32)

        def accumulate(g, acc):
            g = tree_utils.widen(g, acc)
            if self.use_grad_mean:
                return acc + (g - acc) / (state.mini_step + 1).astype(acc.dtype)
            return g + acc

        acc = jax.tree.map(accumulate, updates, state.acc_grads)
        grads = tree_utils.cast_like(acc, updates)
        inner_update = functools.partial(self.opt.update, **extra_args)
        zeros = _zeros_of_output(inner_update, grads, state.inner_opt_state, params)
        emit = state.mini_step == k - 1

        def step(_):
            out, inner_state = inner_update(grads, state.inner_opt_state, params)
            return out, inner_state, jax.tree.map(jnp.zeros_like, acc)

        def hold(_):
            return zeros, state.inner_opt_state, acc

        skip_state = state.skip_state
        if self.should_skip_update_fn is not None:
            skip, skip_state = self.should_skip_update_fn(updates, state.gradient_step, params)
            if jnp.shape(skip) != () or jnp.result_type(skip) != jnp.bool_:
                raise ValueError(
                    f"MultiSteps: should_skip_update_fn must return a scalar bool first, got "
                    f"{jnp.result_type(skip)}{list(jnp.shape(skip))}"
                )
        else:
            skip = jnp.asarray(False)

        def accept(_):
            out, inner_state, new_acc = jax.lax.cond(emit, step, hold, None)
            return out, MultiStepsState(
                mini_step=safe_increment(state.mini_step) % k,
                gradient_step=jnp.where(emit, safe_increment(state.gradient_step),
                                        state.gradient_step),
                inner_opt_state=inner_state,
                acc_grads=new_acc,
                skip_state=skip_state,
            )

        def reject(_):
            return zeros, state._replace(skip_state=skip_state)

        if self.should_skip_update_fn is None:
            return accept(None)
        return jax.lax.cond(skip, reject, accept, None)

    def gradient_transformation(self) -> MultiSteps:
        """This transformation itself: optax's `MultiSteps(...).gradient_transformation()` gives
        its transformation this way, and code written for optax calls it."""
        return self

    def has_updated(self, state) -> jax.Array:
        """Whether the last `update` stepped the inner optimizer."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def hyperparams(self, state) -> dict:
        return {**super().hyperparams(state), "opt": self.opt.hyperparams(state.inner_opt_state)}

    def _substates(self, state):
        return [(type(self.opt).__name__, self.opt, state.inner_opt_state)]


class ApplyEvery(NamedTuple):
    """`count`: micro-batches since the last step (mod k); `grad_acc`: their sum so far."""

    count: Any
    grad_acc: Any


@pytree_dataclass
class apply_every(Transformation):
    """Sums the updates of k steps and emits the sum at every k-th step, zeros at the others.

        a_t = g_t + a_{t-1} (a_t = g_t after an emission),   u_t = a_t at every k-th step, else 0

    Put last in a chain (after the learning rate), it is gradient accumulation of the *updates*;
    `MultiSteps` accumulates the gradients before the optimizer instead, which is the
    big-batch step.

    Args:
      k: the number of steps summed, an integer ≥ 1.

    Returns:
      A transformation with state `ApplyEvery(count, grad_acc)`.

    References:
      optax.apply_every.
    """

    k: int = constant(1, check=integer_at_least(1))

    def init(self, params):
        return ApplyEvery(count=zero_count(), grad_acc=tree_utils.zeros_like(params))

    def update(self, updates, state, params=None, **extra_args):
        k = jnp.asarray(self.k).astype(jnp.int32)
        c = state.count % k
        grad_acc = jax.tree.map(
            lambda g, a: jnp.where(c != 0, a, jnp.zeros_like(a)) + tree_utils.widen(g, a),
            updates, state.grad_acc)
        emit = c == k - 1
        out = jax.tree.map(lambda a, g: jnp.where(emit, a, jnp.zeros_like(a)).astype(g.dtype),
                           grad_acc, updates)
        return out, ApplyEvery(count=safe_increment(state.count) % k, grad_acc=grad_acc)


# -- skipping non-finite steps --------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """`notfinite_count`: consecutive non-finite steps; `total_notfinite`: all of them."""

    notfinite_count: Any
    last_finite: Any
    total_notfinite: Any
    inner_state: Any


@pytree_dataclass(positional=2)
class apply_if_finite(Transformation):
    """Skips a step whose gradients hold an inf or a NaN, and gives up after N in a row.

        finite_t = all_i isfinite(g_t,i)
        n_t = 0 if finite_t else n_{t-1} + 1
        (u_t, s_t) = inner(g_t, s_{t-1})  if finite_t or n_t > N,   else (0, s_{t-1})

    A skipped step leaves the inner state untouched (Adam's moments do not see the NaN). After
    more than N consecutive non-finite steps the update is applied anyway, so a run that has
    truly diverged shows it instead of silently standing still.

    Args:
      inner: the optimizer to protect.
      max_consecutive_errors: N ≥ 0.

    Returns:
      A transformation with state `ApplyIfFiniteState`.

    References:
      optax.apply_if_finite.
    """

    inner: Transformation = child()
    max_consecutive_errors: int = static(check=integer_at_least(0))

    def init(self, params):
        return ApplyIfFiniteState(
            notfinite_count=zero_count(),
            last_finite=jnp.asarray(True),
            total_notfinite=zero_count(),
            inner_state=self.inner.init(params),
        )

    def update(self, updates, state, params=None, **extra_args):
        finite = _all_finite(updates)
        notfinite_count = jnp.where(finite, zero_count(), safe_increment(state.notfinite_count))
        inner_update = functools.partial(self.inner.update, **extra_args)
        zeros = _zeros_of_output(inner_update, updates, state.inner_state, params)
        updates, inner_state = jax.lax.cond(
            jnp.logical_or(finite, notfinite_count > self.max_consecutive_errors),
            lambda _: inner_update(updates, state.inner_state, params),
            lambda _: (zeros, state.inner_state),
            None,
        )
        return updates, ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=finite,
            total_notfinite=jnp.where(finite, state.total_notfinite,
                                      safe_increment(state.total_notfinite)),
            inner_state=inner_state,
        )

    def hyperparams(self, state) -> dict:
        return {"inner": self.inner.hyperparams(state.inner_state)}

    def _substates(self, state):
        return [(type(self.inner).__name__, self.inner, state.inner_state)]
