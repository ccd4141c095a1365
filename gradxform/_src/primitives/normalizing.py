"""Normalizing the updates: centralizing each weight's gradient, dividing by the global norm."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradxform._src.primitives.clipping import global_norm
from gradxform._src.primitives.scaling import CountState
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import cast_scalars, leaf_scalars
from gradxform._src.protocol.fields import hyperparameter, non_negative
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    EmptyState,
    Transformation,
    safe_increment,
    zero_count,
)


@pytree_dataclass
class centralize(Transformation):
    """Gradient centralization: subtracts from each slice along axis 0 its mean.

        u[i, ...] = g[i, ...] - mean_{j...} g[i, j...]      (leaves of rank ≥ 2)
        u = g                                               (vectors and scalars)

    For a weight of shape (outputs, inputs...) (torch's layout) each output's gradient is made
    zero-mean, which constrains the weight vectors to a hyperplane and regularizes training.
    Note that flax and haiku store dense kernels as (inputs, outputs): there axis 0 indexes the
    inputs, as in optax's `centralize`, which this matches.

    Returns:
      A transformation with no state.

    References:
      Yong, Huang, Hua & Zhang, "Gradient Centralization: A New Optimization Technique for Deep
      Neural Networks", ECCV 2020 (eq. 1).
    """

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        def subtract_mean(g):
            if g.ndim < 2:
                return g
            w = tree_utils.widen(g, jnp.zeros((), tree_utils.moment_dtype(g)))
            return (w - w.mean(tuple(range(1, g.ndim)), keepdims=True)).astype(g.dtype)

        return jax.tree.map(subtract_mean, updates), state


@pytree_dataclass(positional=2)
class normalize_by_update_norm(Transformation):
    """Divides all updates by their global norm: u = s · g / (‖g‖ + ε).

        u = g / ((‖g‖ + ε) / s),    ‖g‖ = √(Σ_leaves Σ_i |g_i|²)

    Every step then has length s (normalized gradient descent); `scale_factor=-1` makes it a
    descent step of length 1.

    Args:
      scale_factor: s ≠ 0, a float, an array or a schedule of the step count (1).
      eps: ε ≥ 0, added to the norm (1e-6).

    Returns:
      A transformation; its state holds the step count.
    """

    scale_factor: ScalarOrSchedule = hyperparameter(1.0, check=lambda x: None if x != 0
                                                    else "nonzero")
    eps: ScalarOrSchedule = hyperparameter(1e-6, check=non_negative)

    def init(self, params):
        return CountState(count=zero_count())

    def update(self, updates, state, params=None, **extra_args):
        scalars, new_state = self.tree_scalars(updates, state)
        lookup = leaf_scalars(scalars)
        return jax.tree.map(lambda g: g / lookup(g).divisor, updates), new_state

    # The two halves of update, for the fast path (see protocol/elementwise.py).
    def tree_scalars(self, updates, state):
        """The divisor (‖g‖ + ε) / s from the whole tree, and the new state."""
        norm = global_norm(updates)
        hp = self.at(state.count)
        s = cast_scalars(dict(scale=hp.scale_factor, eps=hp.eps), norm.dtype)
        return {"divisor": (norm + s.eps) / s.scale}, CountState(count=safe_increment(
            state.count))

    def element(self, s, g):
        return g / s.divisor, ()
