"""Polyak's step size: the step that would reach the optimal value on a linear model of the loss.

For a loss f with a known lower bound f* (0 for a model that can interpolate its data), the
step γ = (f(θ) - f*) / ‖∇f(θ)‖² is where the linearisation f(θ) - γ ‖∇f‖² reaches f*. It needs
the loss value at the params, which `update` receives as `value=`:

    updates, state = opt.update(grads, state, params, value=loss)

`chain` passes such keyword arguments on to every member, so a chain holding
`scale_by_polyak` is called the same way.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.primitives.clipping import global_norm
from gradxform._src.primitives.scaling import CountState
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import cast_scalars
from gradxform._src.protocol.fields import finite, hyperparameter, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation, safe_increment, zero_count

VARIANTS = ("sps", "sps+")


def _variant(x) -> str | None:
    return None if x in VARIANTS else "'sps' or 'sps+'"


@pytree_dataclass(positional=4)
class scale_by_polyak(Transformation):
    """Scales the updates by the stochastic Polyak step size (SPS_max).

        γ_t = min((f(θ_t) - f*) / (‖g_t‖² + ε), γ_max),    u_t = γ_t g_t

    with ‖g‖² = Σ_leaves Σ_i g_i² the squared global norm, and γ_t = 0 where ‖g_t‖² + ε is
    below float64's machine epsilon (a zero gradient: nothing to scale). `variant="sps+"` uses
    the non-negative part of the gap, max(f(θ_t) - f*, 0), so that a loss below the guessed
    f* gives a zero step rather than a step uphill.

    Args:
      f_min: f*, a lower bound on the loss (0).
      max_learning_rate: γ_max ≥ 0, the largest step (1).
      eps: ε ≥ 0, added to ‖g‖² (0).
      variant: "sps" (Loizou et al.) or "sps+" (Garrigos et al.).

    Returns:
      A transformation; its state holds the step count. `update` takes the loss at the params
      as the keyword argument `value`.

    References:
      Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An
      Adaptive Learning Rate for Fast Convergence", AISTATS 2021 (SPS_max, eq. 5).
      Garrigos, Gower & Schaipp, "Function value learning: Adaptive learning rates based on
      the Polyak stepsize and function splitting in ERM", 2023 (SPS+).
    """

    f_min: ScalarOrSchedule = hyperparameter(0.0, check=finite)
    max_learning_rate: ScalarOrSchedule = hyperparameter(1.0, check=non_negative)
    eps: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    variant: str = static("sps", check=_variant)

    def init(self, params):
        return CountState(count=zero_count())

    def update(self, updates, state, params=None, *, value: Any = None, **extra_args):
        if value is None:
            raise TypeError(
                "scale_by_polyak.update: value, the loss at params, is required: call "
                "update(updates, state, params, value=loss) (a chain passes it on)")
        hp = self.at(state.count)
        sq_norm = global_norm(updates, squared=True)                  # ‖g‖²
        s = cast_scalars(dict(f_min=hp.f_min, gamma_max=hp.max_learning_rate, eps=hp.eps),
                         sq_norm.dtype)
        gap = jnp.asarray(value).astype(sq_norm.dtype) - s.f_min      # f(θ) - f*
        if self.variant == "sps+":
            gap = jnp.maximum(gap, 0)                                 # (f(θ) - f*)_+
        denom = sq_norm + s.eps
        step = jnp.where(denom <= np.finfo(np.float64).eps, jnp.zeros((), sq_norm.dtype),
                         jnp.minimum(gap / denom, s.gamma_max))       # min(gap / ‖g‖², γ_max)
        updates = jax.tree.map(lambda g: g * step.astype(g.dtype), updates)
        return updates, CountState(count=safe_increment(state.count))
