"""Reduce the step when a metric stops improving: optax.contrib's `reduce_on_plateau` and
torch's `ReduceLROnPlateau`, one transformation fed the metric as `update(..., value=v)`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import (
    constant,
    in_interval,
    integer_at_least,
    non_negative,
    static,
)
from gradxform._src.protocol.transformation import Transformation, safe_increment


class ReduceLROnPlateauState(NamedTuple):
    """optax's state: the current `scale`, the best (averaged) metric so far, the steps without
    improvement, the cooldown steps left, and the values accumulated towards the next average."""

    scale: Any
    best_value: Any
    plateau_count: Any
    cooldown_count: Any
    count: Any
    avg_value: Any


def _dtypes(params) -> tuple[Any, Any]:
    """The lowest and highest floating dtypes of the params (optax's choice for the state)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not dtypes:
        default = jnp.result_type(float)
        return default, default
    bits = lambda d: jnp.finfo(d).bits  # noqa: E731
    return min(dtypes, key=bits), max(dtypes, key=bits)


@pytree_dataclass(positional=7)
class reduce_on_plateau(Transformation):
    """Scales the updates by s, cut by a factor when the metric has stopped improving.

        v̄ = the mean of the last `accumulation_size` values given (`update(..., value=v)`)
        improved:  v̄ < (1 - rtol) best - atol        (mode "min"; "max": v̄ > (1 + rtol) best + atol)
        best ← v̄ and plateau ← 0 if improved, else plateau ← plateau + 1
        during cooldown: plateau ← 0, cooldown ← cooldown - 1
        else, on a plateau: s ← max(f s, min_scale), plateau ← 0, cooldown ← `cooldown`
        u_t = s g_t

    "On a plateau" is `plateau == patience` with `convention="optax"` (optax.contrib's
    `reduce_on_plateau`, whose arguments and numbers these are) and `plateau > patience` with
    `convention="torch"`, where also a cut that lowers s by `min_scale_step` or less is skipped
    (its counters are reset all the same). `reduce_lr_on_plateau` builds the torch form from
    torch.optim.lr_scheduler.ReduceLROnPlateau's arguments. Put it after the learning rate:
    `chain(sgd(lr), reduce_on_plateau(...))`, and give every `update` the metric, e.g. the
    validation loss: `opt.update(grads, state, params, value=loss)`.

    Args:
      factor: f in (0, 1).
      patience: the steps without improvement that make a plateau (see above).
      rtol: relative improvement needed, in [0, 1].
      atol: absolute improvement needed, ≥ 0 (rtol and atol not both 0).
      cooldown: steps after a cut during which the plateau count stays 0.
      accumulation_size: values averaged into v̄ before each decision (1: every value).
      min_scale: the lowest s.
      mode: "min" (the metric should fall, a loss) or "max" (an accuracy).
      convention: "optax" or "torch".
      min_scale_step: with "torch", the smallest cut of s that is applied.

    Returns:
      A transformation with state `ReduceLROnPlateauState`, optax's. `update` needs `value=`.
    """

    factor: float = constant(0.1, check=in_interval(0, 1, "()"))
    patience: int = constant(10, check=integer_at_least(0))
    rtol: float = constant(1e-4, check=in_interval(0, 1, "[]"))
    atol: float = constant(0.0, check=non_negative)
    cooldown: int = constant(0, check=integer_at_least(0))
    accumulation_size: int = constant(1, check=integer_at_least(1))
    min_scale: float = constant(0.0, check=non_negative)
    mode: str = static("min", check=lambda m: None if m in ("min", "max") else "'min' or 'max'")
    convention: str = static(
        "optax", check=lambda c: None if c in ("optax", "torch") else "'optax' or 'torch'")
    min_scale_step: float = constant(0.0, check=non_negative)

    def _validate(self):
        if (isinstance(self.rtol, int | float) and isinstance(self.atol, int | float)
                and self.rtol == 0 and self.atol == 0):
            raise ValueError("reduce_on_plateau: rtol and atol are both 0; at least one must "
                             "be > 0 (an improvement must be measurable)")

    def init(self, params):
        lowest, highest = _dtypes(params)
        worst = float("inf") if self.mode == "min" else float("-inf")
        return ReduceLROnPlateauState(
            scale=jnp.asarray(1.0, lowest),
            best_value=jnp.asarray(worst, highest),
            plateau_count=jnp.asarray(0, jnp.int32),
            cooldown_count=jnp.asarray(0, jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            avg_value=jnp.asarray(0.0, highest),
        )

    def _decide(self, state, avg):
        """The decision once `accumulation_size` values are averaged into `avg`."""
        best = state.best_value
        if self.mode == "min":
            improved = avg < (1 - self.rtol) * best - self.atol
        else:
            improved = avg > (1 + self.rtol) * best + self.atol
        best = jnp.where(improved, avg, best)
        plateau = jnp.where(improved, 0, safe_increment(state.plateau_count))
        if self.convention == "torch":
            on_plateau = plateau > self.patience
        else:
            on_plateau = plateau == self.patience
        cut = jnp.maximum(jnp.where(on_plateau, state.scale * self.factor, state.scale),
                          self.min_scale).astype(state.scale.dtype)
        if self.convention == "torch":  # torch skips a cut of the lr by eps or less
            cut = jnp.where(state.scale - cut > self.min_scale_step, cut, state.scale)
        cooling = state.cooldown_count > 0
        return ReduceLROnPlateauState(
            scale=jnp.where(cooling, state.scale, cut),
            best_value=best.astype(state.best_value.dtype),
            plateau_count=jnp.where(cooling | on_plateau, 0, plateau).astype(jnp.int32),
            cooldown_count=jnp.where(
                cooling, state.cooldown_count - 1, jnp.where(on_plateau, self.cooldown, 0)
            ).astype(jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            avg_value=jnp.zeros_like(state.avg_value),
        )

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        if value is None:
            raise ValueError("reduce_on_plateau.update: value= (the metric) is required, e.g. "
                             "opt.update(grads, state, params, value=loss)")
        count = safe_increment(state.count)
        dtype = state.avg_value.dtype
        avg = ((state.count.astype(dtype) * state.avg_value + jnp.asarray(value).astype(dtype))
               / count.astype(dtype))
        pending = state._replace(count=count, avg_value=avg)
        decided = self._decide(pending, avg)
        ready = count == self.accumulation_size
        new_state = jax.tree.map(lambda d, p: jnp.where(ready, d, p), decided, pending)
        updates = jax.tree.map(lambda g: new_state.scale.astype(g.dtype) * g, updates)
        return updates, new_state


def reduce_lr_on_plateau(learning_rate: float, *, mode: str = "min", factor: float = 0.1,
                         patience: int = 10, threshold: float = 1e-4,
                         threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                         eps: float = 1e-8) -> reduce_on_plateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, ...) as a transformation.

    `chain(sgd(lr), reduce_lr_on_plateau(lr, ...))`, with `update(..., value=metric)` where torch
    calls `scheduler.step(metric)`: after each update the learning rate is lr · s, s as torch
    cuts it, lr · s_{k+1} = max(f lr · s_k, min_lr), skipped when the cut is eps or less. It is
    `reduce_on_plateau(factor, patience, rtol, atol, cooldown, min_scale=min_lr / lr,
    mode=mode, convention="torch", min_scale_step=eps / lr)` with (rtol, atol) = (threshold,
    0) for threshold_mode "rel" and (0, threshold) for "abs". The update given `value=v` is
    scaled by the s that follows v, torch's lr after `scheduler.step(v)` divided by lr: feed
    each update the metric measured before it (torch's loop measures it after the previous
    step), and every update but the first uses the learning rate torch's would.
    `state.scale` holds s.

    Args:
      learning_rate: lr > 0, the optimizer's learning rate (torch's param group lr).
      mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps: torch's.
    """
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"reduce_lr_on_plateau: threshold_mode must be 'rel' or 'abs', got "
                         f"{threshold_mode!r}")
    if not learning_rate > 0:
        raise ValueError(f"reduce_lr_on_plateau: learning_rate must be > 0, got {learning_rate!r}")
    rtol, atol = (threshold, 0.0) if threshold_mode == "rel" else (0.0, threshold)
    return reduce_on_plateau(factor, patience, rtol, atol, cooldown, 1, min_lr / learning_rate,
                             mode=mode, convention="torch", min_scale_step=eps / learning_rate)
