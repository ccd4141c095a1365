"""Weight averaging for evaluation: Lookahead's slow weights and an EMA of the params.

Both keep a second copy of the params in the optimizer state and read it back with a function
(`slow_params`, `averaged_params`), so the params themselves stay the ones to take gradients at.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.composition.combine import find_states
from gradxform._src.composition.iterate_averaging import PolyakAveragingState, SwaParamsState
from gradxform._src.primitives.clipping import norm_dtype
from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import (
    cast_scalars,
    leaf_scalars,
    map_leaves,
    real_precision,
)
from gradxform._src.protocol.fields import (
    child,
    dtype_option,
    hyperparameter,
    in_interval,
    integer_at_least,
    static,
)
from gradxform._src.protocol.transformation import (
    OptState,
    Params,
    Transformation,
    float_count,
    require_params,
    safe_increment,
    zero_count,
)


def _copy(params, dtype=None):
    """A copy of params in the moment dtype (a fresh buffer, so donating params is safe)."""
    return jax.tree.map(lambda p: jnp.array(p, dtype=tree_utils.moment_dtype(p, dtype), copy=True),
                        params)


# -- Lookahead ------------------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """`slow`: the slow weights φ (evaluate with these); `steps_since_sync`: fast steps since φ."""

    count: Any
    fast_state: Any
    steps_since_sync: Any
    slow: Any


@pytree_dataclass(positional=4)
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
    sync_period: int = hyperparameter(check=integer_at_least(1))
    slow_step_size: float = hyperparameter(check=in_interval(0, 1, "[]"))
    reset_state: bool = static(False)

    def init(self, params):
        return LookaheadState(
            count=zero_count(),
            fast_state=self.fast_optimizer.init(params),
            steps_since_sync=zero_count(),
            slow=_copy(params),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "lookahead", "the fast weights")
        hp = self.at(state.count)
        k = jnp.asarray(hp.sync_period).astype(jnp.int32)
        updates, fast_state = self.fast_optimizer.update(
            updates, state.fast_state, params, **extra_args
        )
        sync = state.steps_since_sync == k - 1
        pull = jnp.where(sync, hp.slow_step_size, 0.0)          # α at a sync, else 0
        keep = jnp.where(sync, 1.0 - hp.slow_step_size, 0.0)   # 1 - α at a sync, else 0

        lookup = leaf_scalars(dict(pull=pull, keep=keep))

        def fold_sync(p, u, phi):
            # d = θ + u - φ, in the slow weights' precision
            d = tree_utils.widen(p, phi) + tree_utils.widen(u, phi) - phi
            s = lookup(d)
            return (tree_utils.widen(u, d) - s.keep * d).astype(u.dtype), phi + s.pull * d

        new_updates, slow = map_leaves(fold_sync, params, updates, state.slow, num_outputs=2)
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


def slow_params(state: OptState) -> Params:
    """The slow weights φ of the `lookahead` inside `state`, the params to evaluate.

    Args:
      state: the state of an optimizer that holds one `lookahead`.

    Returns:
      The slow weights (float32 for 16-bit params).
    """
    return find_states(state, LookaheadState, "slow_params").slow


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
    accumulator_dtype: Any = static(None, check=dtype_option)

    def init(self, params):
        if self.debias:
            ema = tree_utils.zeros_like(params, self.accumulator_dtype)
        else:
            ema = _copy(params, self.accumulator_dtype)
        dtype = norm_dtype(ema)
        weight = jnp.zeros([], dtype) if self.debias else jnp.ones([], dtype)
        return EmaParamsState(count=zero_count(), ema=ema, weight=weight)

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "ema_params")
        hp = self.at(state.count)
        gamma = hp.decay
        if hp.warmup is not None:
            t = float_count(state.count, like=state.weight)
            s = cast_scalars(dict(gamma=gamma, w=hp.warmup), t.dtype)
            gamma = jnp.minimum(s.gamma, (1 + t) / (s.w + t))   # γ_t = min(γ, (1 + t) / (w + t))
        lookup = leaf_scalars(dict(gamma=gamma))

        def average(p, u, e):
            dtype = jnp.promote_types(p.dtype, u.dtype)
            theta = (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)  # as apply_updates
            # θ̄_t = γ_t θ̄_{t-1} + (1 - γ_t) θ_t
            return ema_step(e, theta.astype(e.dtype), lookup(e).gamma, decay_first=True)

        ema = jax.tree.map(average, params, updates, state.ema)
        weight = state.weight
        if self.debias:  # 1 - Π γ_s, the weight of the average started from zero
            weight = ema_step(weight, 1, lookup(weight).gamma, decay_first=True)
        return updates, EmaParamsState(count=safe_increment(state.count), ema=ema, weight=weight)


def averaged_params(state: OptState) -> Params:
    """The averaged params of the `ema_params`, `swa_params` or `polyak_averaging` inside
    `state` (the one of them it holds), the params to evaluate.

        θ̂_t = θ̄_t / weight_t    (ema_params: weight_t = 1 - Π γ_s with debias=True, else 1)

    Before the first update with `debias=True` there is no average yet; this returns zeros.

    Args:
      state: the state of an optimizer that holds one of these averages.

    Returns:
      The averaged params (float32 for 16-bit params).
    """
    kinds = (EmaParamsState, SwaParamsState, PolyakAveragingState)
    found = [x for x in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, kinds))
             if isinstance(x, kinds)]
    if len(found) > 1:
        raise LookupError(
            f"averaged_params: the state holds {len(found)} averages "
            f"({', '.join(type(x).__name__ for x in found)}); expected exactly one. With "
            f"several, pick one with get_state(optimizer, state, name)."
        )
    if found and not isinstance(found[0], EmaParamsState):
        return found[0].average
    s = find_states(state, EmaParamsState, "averaged_params")
    weight = jnp.where(s.weight > 0, s.weight, jnp.ones_like(s.weight))
    # cast per leaf: XLA rewrites a division by a scalar that many leaves share differently
    return jax.tree.map(lambda e: e / cast_scalars(dict(w=weight), real_precision(e)).w, s.ema)
