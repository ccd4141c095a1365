"""Wrappers around a whole optimizer: gradient accumulation, skipping non-finite steps, Lookahead,
and an exponential moving average of the params for evaluation."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform import _tree
from gradxform._base import (
    Transformation,
    child,
    float_count,
    hyperparameter,
    in_interval,
    pytree_dataclass,
    safe_increment,
    static,
    zero_count,
)
from gradxform.clipping import _norm_dtype
from gradxform.combinators import _check_transformation, _find_states


def _integer_at_least_1(x):
    return None if x >= 1 and x == int(x) else "an integer >= 1"


def _zeros_of_output(fn, *args):
    """Zeros shaped like the first output of `fn(*args)`, found without running it."""
    shapes = jax.eval_shape(lambda *a: fn(*a)[0], *args)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _all_finite(tree):
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return functools.reduce(jnp.logical_and, flags, jnp.asarray(True))


def _copy(params, dtype=None):
    """A copy of params in the moment dtype (a fresh buffer, so donating params is safe)."""
    return jax.tree.map(lambda p: jnp.array(p, dtype=_tree.moment_dtype(p, dtype), copy=True),
                        params)


# -- gradient accumulation ------------------------------------------------------------------------


def skip_not_finite(updates, gradient_step, params):
    """A `MultiSteps` skip rule: skip a micro-batch whose gradients hold an inf or a NaN.

    Returns:
      (should_skip, {"should_skip": ..., "num_not_finite": ...}).
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(x)).astype(jnp.int32) for x in jax.tree_util.tree_leaves(updates)]
    num = functools.reduce(jnp.add, counts, jnp.zeros([], jnp.int32))
    return num > 0, {"should_skip": num > 0, "num_not_finite": num}


def skip_large_updates(updates, gradient_step, params, max_squared_norm):
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


@pytree_dataclass(positional=2)
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
    every_k_schedule: int = hyperparameter(check=_integer_at_least_1)
    use_grad_mean: bool = static(True)
    should_skip_update_fn: Callable | None = static(None)
    accumulator_dtype: Any = static(None)

    def __post_init__(self):
        _check_transformation("MultiSteps", "opt", self.opt)
        super().__post_init__()

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
            acc_grads=_tree.zeros_like(params, self.accumulator_dtype),
            skip_state=skip_state,
        )

    def update(self, updates, state, params=None, **extra_args):
        k = jnp.asarray(self.at(state.gradient_step).every_k_schedule).astype(jnp.int32)

        def accumulate(g, acc):
            g = _tree.widen(g, acc)
            if self.use_grad_mean:
                return acc + (g - acc) / (state.mini_step + 1).astype(acc.dtype)
            return g + acc

        acc = jax.tree.map(accumulate, updates, state.acc_grads)
        grads = _tree.cast_like(acc, updates)
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

    def has_updated(self, state) -> jax.Array:
        """Whether the last `update` stepped the inner optimizer."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def hyperparams(self, state) -> dict:
        return {**super().hyperparams(state), "opt": self.opt.hyperparams(state.inner_opt_state)}

    def _substates(self, state):
        return [(type(self.opt).__name__, self.opt, state.inner_opt_state)]


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
    max_consecutive_errors: int = static(
        check=lambda n: None if isinstance(n, int) and n >= 0 else "an integer >= 0"
    )

    def __post_init__(self):
        _check_transformation("apply_if_finite", "inner", self.inner)
        super().__post_init__()

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


# -- Lookahead ------------------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """`slow`: the slow weights φ (evaluate with these); `steps_since_sync`: fast steps since φ."""

    count: Any
    fast_state: Any
    steps_since_sync: Any
    slow: Any


@pytree_dataclass(positional=3)
class lookahead(Transformation):
    """Lookahead: k fast steps forward, then the slow weights move a fraction α toward them.

        θ_{t,i+1} = θ_{t,i} + A(g_{t,i})          i = 0..k-1   (fast weights, the params)
        φ_{t+1} = φ_t + α (θ_{t,k} - φ_t)                      (slow weights, in the state)
        θ_{t+1,0} = φ_{t+1}                                    (fast weights reset)

    The params are the fast weights (take gradients there); the slow weights are kept in the
    state, `slow_params(state)`, and are the ones to evaluate. The sync is folded into the k-th
    update: with d = θ + u - φ, the update is u - (1 - α) d and φ ← φ + α d (optax's algebra).
    Give the updates of this transformation to `apply_updates` unchanged.

    Args:
      fast_optimizer: A, the inner optimizer.
      sync_period: k ≥ 1.
      slow_step_size: α in [0, 1], a float, an array or a schedule of the step count.
      reset_state: re-initialise A's state at each sync.

    Returns:
      A transformation with state `LookaheadState(count, fast_state, steps_since_sync, slow)`.
      `update` needs params.

    References:
      Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back",
      NeurIPS 2019, Algorithm 1.
    """

    fast_optimizer: Transformation = child()
    sync_period: int = hyperparameter(check=_integer_at_least_1)
    slow_step_size: float = hyperparameter(check=in_interval(0, 1, "[]"))
    reset_state: bool = static(False)

    def __post_init__(self):
        _check_transformation("lookahead", "fast_optimizer", self.fast_optimizer)
        super().__post_init__()

    def init(self, params):
        return LookaheadState(
            count=zero_count(),
            fast_state=self.fast_optimizer.init(params),
            steps_since_sync=zero_count(),
            slow=_copy(params),
        )

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "lookahead.update: params (the fast weights) are required (pass them as "
                "update(updates, state, params))"
            )
        h = self.at(state.count)
        k = jnp.asarray(h.sync_period).astype(jnp.int32)
        updates, fast_state = self.fast_optimizer.update(
            updates, state.fast_state, params, **extra_args
        )
        sync = state.steps_since_sync == k - 1
        pull = jnp.where(sync, h.slow_step_size, 0.0)          # α at a sync, else 0
        keep = jnp.where(sync, 1.0 - h.slow_step_size, 0.0)   # 1 - α at a sync, else 0

        # d = θ + u - φ, in the slow weights' precision
        d = jax.tree.map(lambda p, u, phi: _tree.widen(p, phi) + _tree.widen(u, phi) - phi,
                         params, updates, state.slow)
        new_updates = jax.tree.map(
            lambda u, d: (_tree.widen(u, d) - _tree.coef(keep, d) * d).astype(u.dtype),
            updates, d,
        )
        slow = jax.tree.map(lambda phi, d: phi + _tree.coef(pull, d) * d, state.slow, d)
        if self.reset_state:
            fresh = self.fast_optimizer.init(params)
            fast_state = jax.tree.map(lambda f, s: jnp.where(sync, f, s), fresh, fast_state)
        return new_updates, LookaheadState(
            count=safe_increment(state.count),
            fast_state=fast_state,
            steps_since_sync=safe_increment(state.steps_since_sync) % k,
            slow=slow,
        )

    def hyperparams(self, state) -> dict:
        return {**super().hyperparams(state),
                "fast_optimizer": self.fast_optimizer.hyperparams(state.fast_state)}

    def _substates(self, state):
        return [(type(self.fast_optimizer).__name__, self.fast_optimizer, state.fast_state)]


def slow_params(state):
    """The slow weights φ of the `lookahead` inside `state`, the params to evaluate.

    Args:
      state: the state of an optimizer that holds one `lookahead`.

    Returns:
      The slow weights (float32 for 16-bit params).
    """
    return _find_states(state, LookaheadState, "slow_params").slow


# -- EMA of the params ----------------------------------------------------------------------------


class EmaParamsState(NamedTuple):
    """`ema` of the params; `weight` = 1 - Π γ_s when started from zero (debias), else 1."""

    count: Any
    ema: Any
    weight: Any


@pytree_dataclass
class ema_params(Transformation):
    """Keeps an exponential moving average of the params for evaluation (Polyak averaging).

        θ_t = θ_{t-1} + u_t                            (the params after this step)
        θ̄_t = γ_t θ̄_{t-1} + (1 - γ_t) θ_t
        γ_t = min(γ, (1 + t) / (w + t))                (warmup=w; else γ_t = γ; t = 0, 1, ...)

    Two starts: θ̄_0 = θ_0, the initial params (default, as TF and timm do), or θ̄_0 = 0 with
    the bias corrected when read, θ̂_t = θ̄_t / (1 - Π_s γ_s) (`debias=True`, Adam's
    correction; with a constant γ, 1 - γ^t). `averaged_params(state)` returns the average to
    evaluate. Warmup makes early averages short (γ_0 = 1/w) so they are not dominated by the
    random initialisation; w = 10 is TF's `ExponentialMovingAverage(num_updates=...)`.

    It passes the updates through unchanged and reads θ_t = θ_{t-1} + u_t, so put it last in
    the chain: `chain(adamw(1e-3), ema_params(0.999))`.

    Args:
      decay: γ in [0, 1), a float, an array or a schedule of the step count.
      debias: start from zero and correct the bias (True) or start from the initial params.
      warmup: w > 1 or None.
      accumulator_dtype: dtype of θ̄ (default: the params' dtype, float32 for 16-bit params).

    Returns:
      A transformation with state `EmaParamsState(count, ema, weight)`. `update` needs params.

    References:
      Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
      Control Optim. 1992.
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §3 (debiasing).
    """

    decay: float = hyperparameter(check=in_interval(0, 1, "[)"))
    debias: bool = static(False)
    warmup: float | None = hyperparameter(None, check=lambda w: None if w > 1 else "> 1")
    accumulator_dtype: Any = static(None)

    def init(self, params):
        if self.debias:
            ema = _tree.zeros_like(params, self.accumulator_dtype)
        else:
            ema = _copy(params, self.accumulator_dtype)
        dtype = _norm_dtype(ema)
        weight = jnp.zeros([], dtype) if self.debias else jnp.ones([], dtype)
        return EmaParamsState(count=zero_count(), ema=ema, weight=weight)

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "ema_params.update: params are required (pass them as "
                "update(updates, state, params))"
            )
        h = self.at(state.count)
        gamma = h.decay
        if h.warmup is not None:
            t = float_count(state.count, like=state.weight)
            gamma = jnp.minimum(_tree.coef(gamma, t), (1 + t) / (_tree.coef(h.warmup, t) + t))

        def average(p, u, e):
            dtype = jnp.promote_types(p.dtype, u.dtype)
            theta = (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)  # as apply_updates
            return _tree.coef(gamma, e) * e + (1 - _tree.coef(gamma, e)) * theta.astype(e.dtype)

        ema = jax.tree.map(average, params, updates, state.ema)
        weight = state.weight
        if self.debias:
            weight = _tree.coef(gamma, weight) * weight + (1 - _tree.coef(gamma, weight))
        return updates, EmaParamsState(count=safe_increment(state.count), ema=ema, weight=weight)


def averaged_params(state):
    """The averaged params θ̂ of the `ema_params` inside `state`, the params to evaluate.

        θ̂_t = θ̄_t / weight_t    (weight_t = 1 - Π γ_s with debias=True, else 1)

    Before the first update with `debias=True` there is no average yet; this returns zeros.

    Args:
      state: the state of an optimizer that holds one `ema_params`.

    Returns:
      The averaged params (float32 for 16-bit params).
    """
    s = _find_states(state, EmaParamsState, "averaged_params")
    weight = jnp.where(s.weight > 0, s.weight, jnp.ones_like(s.weight))
    return jax.tree.map(lambda e: e / _tree.coef(weight, e), s.ema)
