"""Lion: the sign of an interpolation of momentum and gradient (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import hyperparameter, in_interval, static
from gradxform._src.protocol.transformation import Transformation, safe_increment, zero_count


class ScaleByLionState(NamedTuple):
    count: Any
    mu: Any


@pytree_dataclass
class scale_by_lion(Transformation):
    """Lion's direction: one sign per coordinate, one moment buffer.

        u_t = sign(β1 m_{t-1} + (1 - β1) g_t)
        m_t = β2 m_{t-1} + (1 - β2) g_t

    Every coordinate moves by exactly the learning rate, so Lion wants a learning rate 3-10x
    smaller than AdamW's and a weight decay 3-10x larger. It keeps one buffer instead of Adam's
    two: half the optimizer memory.

    Args:
      b1: β1 in [0, 1), the interpolation for the update (0.9).
      b2: β2 in [0, 1), the momentum's decay (0.99).
      mu_dtype: dtype of m (default: the params' dtype, float32 for 16-bit params).

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, Algorithm 2.
    """

    b1: float = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    b2: float = hyperparameter(0.99, check=in_interval(0, 1, "[)"))
    mu_dtype: Any = static(None)

    def init(self, params):
        return ScaleByLionState(count=zero_count(), mu=tree_utils.zeros_like(params, self.mu_dtype))

    def update(self, updates, state, params=None, **extra_args):
        h = self.at(state.count)
        # Both are interpolations β m + (1 - β) g (ema_step), in the wider precision of g and m;
        # m is stored back in its own dtype.
        direction = jax.tree.map(
            lambda g, m: jnp.sign(ema_step(g, m, h.b1)).astype(g.dtype), updates, state.mu
        )
        m = jax.tree.map(lambda g, m: ema_step(g, m, h.b2), updates, state.mu)
        return direction, ScaleByLionState(
            count=safe_increment(state.count), mu=tree_utils.cast_like(m, state.mu)
        )
