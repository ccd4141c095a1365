"""Schedule-Free optimization: averaging and interpolation instead of a learning-rate schedule.

Defazio et al. (2024) keep three sequences: z, the base optimizer's own iterates (SGD or Adam
without momentum, at a constant learning rate); x, a weighted running average of z, which is
what one evaluates; and y, a point between them, where the gradient is taken:

    y_t     = (1 - β) z_t + β x_t
    z_{t+1} = z_t - γ_t ∇f(y_t)                         (the base optimizer's step)
    x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1},       c_{t+1} = γ_t² / Σ_{i≤t} γ_i²

The average plays the role of the decaying schedule (Polyak averaging is as good as a linearly
decaying learning rate in theory, and the interpolation makes it as good in practice), and β
plays the role of momentum. The run needs no stopping time: x is a good model at every step.

Only z and y are stored: the params the training loop holds are y, the state holds z, and x is
recovered as x = (y - (1 - β) z) / β (`schedule_free_eval_params`). The memory is that of SGD
with momentum (one extra buffer).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.composition.combine import find_states
from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import cast_scalars, real_precision
from gradxform._src.protocol.fields import (
    child,
    dtype_option,
    hyperparameter,
    in_interval,
    non_negative,
    static,
)
from gradxform._src.protocol.transformation import (
    OptState,
    Params,
    Transformation,
    require_params,
    safe_increment,
    zero_count,
)


class ScheduleFreeState(NamedTuple):
    count: Any  # steps taken
    b1: Any  # the β that formed the current y (needed to recover x from y and z)
    weight_sum: Any  # Σ_{i≤t} γ_max,i^p
    max_lr: Any  # the largest learning rate so far
    base_optimizer_state: Any
    z: Any


def _scalar_dtype(params):
    """float64 when some param is float64 (under x64), float32 otherwise."""
    leaves = jax.tree_util.tree_leaves(params)
    if any(jnp.result_type(x) == jnp.float64 for x in leaves):
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


@pytree_dataclass(positional=2)
class schedule_free(Transformation):
    """Makes `base_optimizer` schedule-free: its steps move z, and the params follow y.

        z_{t+1} = z_t + Δ_t,         Δ_t = base_optimizer(∇f(y_t))      (e.g. -γ_t ∇f(y_t))
        c_{t+1} = w_t / Σ_{i≤t} w_i,  w_t = (max_{i≤t} γ_i)^p             (p = weight_lr_power)
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
        y_{t+1} = β x_{t+1} + (1 - β) z_{t+1}
        u_t     = y_{t+1} - y_t

    `params` passed to `update` are y; evaluate with `schedule_free_eval_params(state, params)`
    (x). The base optimizer should have no momentum: β is the momentum. Weighting by the
    learning rate (p = 2) keeps the average from being dominated by the small steps of a warmup.

    `learning_rate` must be the base optimizer's learning rate (the same float or schedule): it
    is evaluated at the step count, as the base optimizer's `scale_by_learning_rate` is, so the
    weight w_t belongs to the step it weighs, as in the paper's reference implementation. (optax's
    `contrib.schedule_free` evaluates it one count later; with a constant learning rate the two
    agree, with a warmup schedule optax's averaging weights lead its steps by one.)

    Args:
      base_optimizer: the optimizer whose steps move z (`sgd(γ)`, Adam without momentum, ...).
      learning_rate: γ, as given to the base optimizer.
      b1: β in (0, 1], the interpolation (0.9).
      weight_lr_power: p ≥ 0 (2).
      state_dtype: dtype of z (default: the params' dtype, float32 for 16-bit params).

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled",
      NeurIPS 2024, Algorithm 1 and §4 (warmup and learning-rate weighting).
    """

    base_optimizer: Transformation = child()
    learning_rate: Any = hyperparameter(check=non_negative)
    b1: float = hyperparameter(0.9, check=in_interval(0, 1, "(]"))
    weight_lr_power: float = hyperparameter(2.0, check=non_negative)
    state_dtype: Any = static(None, check=dtype_option)

    def init(self, params):
        dt = _scalar_dtype(params)
        z = jax.tree.map(
            lambda p: jnp.array(p, dtype=tree_utils.moment_dtype(p, self.state_dtype), copy=True),
            params,
        )
        return ScheduleFreeState(
            count=zero_count(),
            b1=jnp.asarray(self.at(zero_count()).b1, dt),
            weight_sum=jnp.zeros([], dt),
            max_lr=jnp.zeros([], dt),
            base_optimizer_state=self.base_optimizer.init(params),
            z=z,
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "schedule_free", "the y sequence")
        hp = self.at(state.count)
        dt = state.weight_sum.dtype
        lr = jnp.asarray(hp.learning_rate).astype(dt)
        max_lr = jnp.maximum(state.max_lr, lr)
        weight = max_lr ** jnp.asarray(hp.weight_lr_power).astype(dt)
        weight_sum = state.weight_sum + weight
        # c = 0 while every learning rate so far is 0 (nothing to average yet); NaNs pass on.
        c = jnp.where(weight_sum == 0, jnp.zeros([], dt),
                      weight / jnp.where(weight_sum == 0, jnp.ones([], dt), weight_sum))

        steps, base_state = self.base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra_args)
        z = jax.tree.map(lambda z, d: z + d.astype(z.dtype), state.z, steps)
        b_prev, b = state.b1, jnp.asarray(hp.b1).astype(dt)

        # Cast per leaf, and β_prev twice: a divisor cast on its own for one leaf is turned by
        # XLA into a product with its reciprocal (as it always was here); shared with 1 - β or
        # with other leaves it stays a division, which differs in the last bit where the state
        # is float64 and the params float32.
        scalars = dict(b_prev=b_prev, divisor=b_prev, c=c, b=b)

        def new_y(y, z_prev, z):
            s = cast_scalars(scalars, real_precision(z))
            y_w = y.astype(z.dtype)
            x_prev = (y_w - (1 - s.b_prev) * z_prev) / s.divisor  # x_t = (y_t - (1 - β) z_t) / β
            x = (1 - s.c) * x_prev + s.c * z                      # x_{t+1}, the weighted mean of z
            y_next = ema_step(x, z, s.b, decay_first=True)        # y = β x + (1 - β) z
            return (y_next - y_w).astype(y.dtype)

        updates = jax.tree.map(new_y, params, state.z, z)
        return updates, ScheduleFreeState(
            count=safe_increment(state.count), b1=b, weight_sum=weight_sum, max_lr=max_lr,
            base_optimizer_state=base_state, z=z,
        )

    def _substates(self, state):
        return [(type(self.base_optimizer).__name__, self.base_optimizer,
                 state.base_optimizer_state)]


def schedule_free_eval_params(state: OptState, params: Params) -> Params:
    """The evaluation params x of a schedule-free run, from its params y and its state.

        x = (y - (1 - β) z) / β

    Args:
      state: the optimizer's state; it must hold exactly one `ScheduleFreeState` (at any depth,
        e.g. inside a chain).
      params: the training params y.

    Returns:
      x, in the params' dtypes.
    """
    sf = find_states(state, ScheduleFreeState, "schedule_free_eval_params")
    tree_utils.check_same_structure(params, sf.z, "schedule_free_eval_params", "params",
                                    "state's z")

    def x(y, z):
        b = cast_scalars(dict(b=sf.b1), real_precision(z)).b  # per leaf, as in the update
        return ((y.astype(z.dtype) - (1 - b) * z) / b).astype(y.dtype)

    return jax.tree.map(x, params, sf.z)
