"""Averages of the iterates: Polyak-Ruppert averaging (ASGD) and stochastic weight averaging.

Both keep an average of the params θ_t in the state, next to the params themselves (which stay
the ones to take gradients at), and read it back with `averaged_params(state)`, like
`ema_params`. Put them last in a chain: they read θ_t = θ_{t-1} + u_t from the params and the
updates, and pass the updates through unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import (
    constant,
    finite,
    in_interval,
    integer_at_least,
)
from gradxform._src.protocol.transformation import (
    Transformation,
    float_count,
    require_params,
    safe_increment,
    zero_count,
)


def _copy(params):
    """A fresh copy of params (in float32 for 16-bit params), so donating params is safe."""
    return jax.tree.map(lambda p: jnp.array(p, dtype=tree_utils.moment_dtype(p), copy=True),
                        params)


def _next_params(p, u, like):
    """θ_t = θ_{t-1} + u_t as `apply_updates` rounds it, then in the average's dtype."""
    dtype = jnp.promote_types(p.dtype, u.dtype)
    return (p.astype(dtype) + u.astype(dtype)).astype(p.dtype).astype(like.dtype)


class PolyakAveragingState(NamedTuple):
    """`average`: θ̄_t, the average of the iterates since t0 (the params themselves until t0)."""

    count: Any
    average: Any


@pytree_dataclass
class polyak_averaging(Transformation):
    """Polyak-Ruppert averaging of the iterates from step t0 on, as torch.optim.ASGD keeps it.

        μ_t = 1 / max(1, t - t0)                 (t = 0, 1, ...: the steps before this one)
        θ̄_t = θ_t                  if μ_t = 1
              θ̄_{t-1} + μ_t (θ_t - θ̄_{t-1})  otherwise

    Up to step t0 + 1 (included) the average is the current params; after it, θ̄ is the mean
    of the iterates from step t0 + 1 on. Averaging the iterates of SGD with decaying steps
    converges at the optimal rate where the last iterate does not (Polyak & Juditsky 1992).
    `asgd` puts it after torch's ASGD step; `averaged_params(state)` reads θ̄.

    Args:
      t0: the step after which averaging starts (torch's default 1e6 averages nothing in
        practice), a number, not a schedule.

    Returns:
      A transformation with state `PolyakAveragingState(count, average)`. `update` needs params.

    References:
      Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
      Control Optim. 30(4), 1992.
      Bottou, "Stochastic Gradient Descent Tricks", Neural Networks: Tricks of the Trade, 2012
      (ASGD, §5.3).
    """

    t0: float = constant(1e6, check=finite)

    def init(self, params):
        return PolyakAveragingState(count=zero_count(), average=_copy(params))

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "polyak_averaging")
        c = float_count(state.count)
        mu = 1 / jnp.maximum(1, c - self.t0)                    # μ_t = 1 / max(1, t - t0)
        lookup = leaf_scalars(dict(mu=mu))

        def average(p, u, a):
            theta = _next_params(p, u, a)
            s = lookup(a)
            return jnp.where(s.mu == 1, theta, a + (theta - a) * s.mu)

        avg = jax.tree.map(average, params, updates, state.average)
        return updates, PolyakAveragingState(count=safe_increment(state.count), average=avg)


class SwaParamsState(NamedTuple):
    """`average`: the averaged params; `n_averaged`: how many iterates went into it."""

    count: Any
    n_averaged: Any
    average: Any


def _lerp(a, b, w):
    """a + w (b - a), computed as torch.lerp does (from the nearer end)."""
    return jnp.where(w < 0.5, a + w * (b - a), b - (b - a) * (1 - w))


@pytree_dataclass
class swa_params(Transformation):
    """Stochastic weight averaging: the mean of the iterates, taken every k steps from a start.

        averaged at steps t = s, s + k, s + 2k, ...  (t = 0, 1, ...; θ_t the params after step t)
        θ̄ ← θ_t                                at the first of them
        θ̄ ← θ̄ + (θ_t - θ̄) / (n + 1)            after that, n the iterates averaged so far
        θ̄ ← γ θ̄ + (1 - γ) θ_t                  instead, with `decay=γ` (an EMA of them)

    torch.optim.swa_utils.AveragedModel(model) is `swa_params(start, every)` when the training
    loop calls `update_parameters` after each optimizer step from step `start` on, every
    `every` steps; `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(γ))` is
    `swa_params(start, every, decay=γ)`. Before the first average θ̄ is the initial params (the
    copy AveragedModel starts from). `averaged_params(state)` reads θ̄. A large constant or
    cyclical learning rate from the start on (`swa_lr_schedule`, torch's SWALR) makes the
    iterates explore a wide minimum whose centre the average finds.

    Args:
      start: s ≥ 0, the first step averaged.
      every: k ≥ 1.
      decay: γ in [0, 1], or None for the equal-weight mean.

    Returns:
      A transformation with state `SwaParamsState(count, n_averaged, average)`. `update` needs
      params.

    References:
      Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, "Averaging Weights Leads to Wider Optima
      and Better Generalization", UAI 2018.
    """

    start: int = constant(0, check=integer_at_least(0))
    every: int = constant(1, check=integer_at_least(1))
    decay: float | None = constant(None, check=in_interval(0, 1, "[]"))

    def init(self, params):
        return SwaParamsState(count=zero_count(), n_averaged=zero_count(),
                              average=_copy(params))

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "swa_params")
        t, n = state.count, state.n_averaged
        due = (t >= self.start) & ((t - self.start) % self.every == 0)
        if self.decay is None:
            w = 1 / (float_count(n) + 1)                        # 1 / (n + 1)
        else:
            w = 1 - self.decay                                  # 1 - γ
        w = jnp.where(n == 0, 1.0, w)                           # the first average is a copy
        lookup = leaf_scalars(dict(w=w))

        def average(p, u, a):
            return jnp.where(due, _lerp(a, _next_params(p, u, a), lookup(a).w), a)

        avg = jax.tree.map(average, params, updates, state.average)
        return updates, SwaParamsState(count=safe_increment(t),
                                       n_averaged=n + due.astype(n.dtype), average=avg)
