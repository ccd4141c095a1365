"""Scaling updates by a constant, a learning rate or a sign; identity and zero updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, non_negative, static
from gradxform._src.protocol.masks import as_static_mask
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import EmptyState, Transformation


class CountState(NamedTuple):
    """The state of a transformation whose only memory is its step count (for schedules)."""

    count: Any


@pytree_dataclass
class identity(Transformation):
    """Returns the updates unchanged: u_t = g_t."""

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return updates, state


@pytree_dataclass
class set_to_zero(Transformation):
    """Replaces every update by zero: u_t = 0 (freezes the parameters it is applied to)."""

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(jnp.zeros_like, updates), state


@pytree_dataclass
class scale(ElementwiseTransformation):
    """Multiplies the updates by a constant: u_t = α g_t.

    `scale(-lr)` turns a descent direction into an update; `scale_by_learning_rate(lr)` says the
    same with the sign made explicit.

    Args:
      step_size: α, a float, an array or a schedule of the step count.
    """

    step_size: ScalarOrSchedule = hyperparameter()

    state_type = CountState

    def element(self, s, g):
        return s.step_size * g, ()                       # u_t = α g_t


@pytree_dataclass
class scale_by_learning_rate(ElementwiseTransformation):
    """Scales the updates by the negated learning rate: u_t = -η g_t.

    The sign makes the chain a descent step; `flip_sign=False` gives u_t = η g_t (for ascent or
    for a chain that negates elsewhere).

    Args:
      learning_rate: η ≥ 0, a float, an array or a schedule of the step count.
      flip_sign: whether to negate (descent, the default).
    """

    learning_rate: ScalarOrSchedule = hyperparameter(check=non_negative)
    flip_sign: bool = static(True)

    state_type = CountState

    def element(self, s, g):
        sign = -1 if self.flip_sign else 1
        return (sign * s.learning_rate) * g, ()          # u_t = -η g_t


@pytree_dataclass
class negate(ElementwiseTransformation):
    """Negates the updates: u_t = -g_t. Put first, it turns any optimizer into an ascent method.

    `chain(negate(), opt)` maximizes what `opt` minimizes: it is torch.optim's `maximize=True`
    for every optimizer (torch negates the gradient before anything else reads it, weight decay
    included). `scale(-1.0)` gives the same numbers; `negate` keeps no step count and says why
    the sign is there.
    """

    state_type = EmptyState

    def element(self, s, g):
        return -g, ()                                    # u_t = -g_t


@pytree_dataclass
class scale_by_sign(ElementwiseTransformation):
    """Keeps only the sign of each update: u_t = sign(g_t).

    References:
      Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
      Non-Convex Problems", ICML 2018.
    """

    state_type = EmptyState

    def element(self, s, g):
        return jnp.sign(g), ()                           # u_t = sign(g_t)


@pytree_dataclass(positional=2)
class add_decayed_weights(ElementwiseTransformation):
    """Adds weight decay to the updates: u_t = g_t + λ θ_{t-1}.

    Where it sits in a chain decides which weight decay it is (Loshchilov & Hutter, 2019):
    - before an adaptive scaling, `chain(add_decayed_weights(λ), scale_by_adam(), ...)`, it is
      coupled L2 regularization (∇(L + λ/2 ‖θ‖²)), rescaled per coordinate by Adam: what
      `torch.optim.Adam(weight_decay=λ)` does;
    - after it, `chain(scale_by_adam(), add_decayed_weights(λ), scale_by_learning_rate(η))`, it
      is decoupled weight decay θ ← θ - η(u + λθ): AdamW.

    Args:
      weight_decay: λ ≥ 0, a float, an array or a schedule of the step count.
      mask: which params decay: a tree of bools (a prefix of params is enough) or a function
        of params that returns one. None decays every param. On the other leaves u_t = g_t.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    weight_decay: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    mask: object = static(None)

    def __post_init__(self):
        object.__setattr__(self, "mask", as_static_mask(self.mask))
        super().__post_init__()

    state_type = CountState
    needs_params = True

    def leaf_mask(self, params):
        return None if self.mask is None else self.mask.resolve(params, "add_decayed_weights")

    def element(self, s, g, p=None):
        return g + s.weight_decay * p.astype(g.dtype), ()    # u_t = g_t + λ θ_{t-1}
