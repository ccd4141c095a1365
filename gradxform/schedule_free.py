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

from gradxform import _tree
from gradxform._base import (
    Transformation,
    child,
    hyperparameter,
    in_interval,
    non_negative,
    pytree_dataclass,
    safe_increment,
    static,
    zero_count,
)
from gradxform.adaptive import scale_by_rms
from gradxform.alias import sgd
from gradxform.combinators import _check_transformation, _find_states
from gradxform.combine import chain
from gradxform.scaling import add_decayed_weights, scale_by_learning_rate
from gradxform.schedules import linear_schedule


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
    state_dtype: Any = static(None)

    def __post_init__(self):
        _check_transformation("schedule_free", "base_optimizer", self.base_optimizer)
        super().__post_init__()

    def init(self, params):
        dt = _scalar_dtype(params)
        z = jax.tree.map(
            lambda p: jnp.array(p, dtype=_tree.moment_dtype(p, self.state_dtype), copy=True),
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
        if params is None:
            raise ValueError(
                "schedule_free.update: params (the y sequence) are required; pass them as "
                "update(updates, state, params)"
            )
        h = self.at(state.count)
        dt = state.weight_sum.dtype
        lr = jnp.asarray(h.learning_rate).astype(dt)
        max_lr = jnp.maximum(state.max_lr, lr)
        weight = max_lr ** jnp.asarray(h.weight_lr_power).astype(dt)
        weight_sum = state.weight_sum + weight
        # c = 0 while every learning rate so far is 0 (nothing to average yet); NaNs pass on.
        c = jnp.where(weight_sum == 0, jnp.zeros([], dt),
                      weight / jnp.where(weight_sum == 0, jnp.ones([], dt), weight_sum))

        steps, base_state = self.base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra_args)
        z = jax.tree.map(lambda z, d: z + d.astype(z.dtype), state.z, steps)
        b_prev, b = state.b1, jnp.asarray(h.b1).astype(dt)

        def new_y(y, z_prev, z):
            y_w = y.astype(z.dtype)
            x_prev = (y_w - (1 - _tree.coef(b_prev, z)) * z_prev) / _tree.coef(b_prev, z)
            x = (1 - _tree.coef(c, z)) * x_prev + _tree.coef(c, z) * z
            return (_tree.coef(b, z) * x + (1 - _tree.coef(b, z)) * z - y_w).astype(y.dtype)

        updates = jax.tree.map(new_y, params, state.z, z)
        return updates, ScheduleFreeState(
            count=safe_increment(state.count), b1=b, weight_sum=weight_sum, max_lr=max_lr,
            base_optimizer_state=base_state, z=z,
        )

    def hyperparams(self, state) -> dict:
        out = super().hyperparams(state)
        out[type(self.base_optimizer).__name__] = self.base_optimizer.hyperparams(
            state.base_optimizer_state)
        return out

    def _substates(self, state):
        return [(type(self.base_optimizer).__name__, self.base_optimizer,
                 state.base_optimizer_state)]


def schedule_free_eval_params(state, params):
    """The evaluation params x of a schedule-free run, from its params y and its state.

        x = (y - (1 - β) z) / β

    Args:
      state: the optimizer's state; it must hold exactly one `ScheduleFreeState` (at any depth,
        e.g. inside a chain).
      params: the training params y.

    Returns:
      x, in the params' dtypes.
    """
    sf = _find_states(state, ScheduleFreeState, "schedule_free_eval_params")
    _tree.check_same_structure(params, sf.z, "schedule_free_eval_params", "params", "state's z")

    def x(y, z):
        b = _tree.coef(sf.b1, z)
        return ((y.astype(z.dtype) - (1 - b) * z) / b).astype(y.dtype)

    return jax.tree.map(x, params, sf.z)


def _warmup(learning_rate, warmup_steps):
    """γ_t = γ min(1, (t + 1)/W): the reference implementation's warmup (step 0 already moves)."""
    if warmup_steps is None:
        return learning_rate
    if not (isinstance(warmup_steps, int) and warmup_steps >= 1):
        raise ValueError(f"warmup_steps must be an integer >= 1 or None, got {warmup_steps!r}")
    return linear_schedule(learning_rate / warmup_steps, learning_rate, warmup_steps - 1)


def schedule_free_sgd(learning_rate=1.0, *, warmup_steps: int | None = None, b1=0.9,
                      weight_decay=None, weight_lr_power=2.0, state_dtype=None) -> schedule_free:
    """Schedule-Free SGD: schedule_free(sgd(γ, weight_decay=λ), γ, b1=β).

    z_{t+1} = z_t - γ_t (∇f(y_t) + λ y_t). `warmup_steps` W gives γ_t = γ min(1, (t + 1)/W),
    as the paper's reference implementation. optax's `contrib.schedule_free_sgd` takes the same
    arguments and gives the same numbers without warmup (see `schedule_free` for the difference
    with one).
    """
    lr = _warmup(learning_rate, warmup_steps)
    return schedule_free(sgd(lr, weight_decay=weight_decay), lr, b1=b1,
                         weight_lr_power=weight_lr_power, state_dtype=state_dtype)


def schedule_free_adamw(learning_rate=0.0025, *, warmup_steps: int | None = None, b1=0.9,
                        b2=0.999, eps=1e-8, weight_decay=0.0, weight_lr_power=2.0,
                        state_dtype=None) -> schedule_free:
    """Schedule-Free AdamW: the base step is Adam without momentum, with decoupled decay at y.

        v_t = β2 v_{t-1} + (1 - β2) g_t²,   z_{t+1} = z_t - γ_t (g_t / (√(v_t / (1 - β2^t)) + ε)
                                                              + λ y_t)

    schedule_free(chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
                        add_decayed_weights(weight_decay), scale_by_learning_rate(γ)), γ, b1=β)

    Same arguments and numbers as optax's `contrib.schedule_free_adamw` (without warmup; see
    `schedule_free`).

    References:
      Defazio et al., "The Road Less Scheduled", NeurIPS 2024, Algorithm 1 (Schedule-Free AdamW).
    """
    lr = _warmup(learning_rate, warmup_steps)
    base = chain(
        scale_by_rms(b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(lr),
    )
    return schedule_free(base, lr, b1=b1, weight_lr_power=weight_lr_power,
                         state_dtype=state_dtype)
