"""Lion: the sign of an interpolation of momentum and gradient (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import dtype_option, hyperparameter, in_interval, static
from gradxform._src.protocol.schedule import ScalarOrSchedule


class ScaleByLionState(NamedTuple):
    count: Any
    mu: Any


@pytree_dataclass
class scale_by_lion(ElementwiseTransformation):
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

    b1: ScalarOrSchedule = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    b2: ScalarOrSchedule = hyperparameter(0.99, check=in_interval(0, 1, "[)"))
    mu_dtype: DTypeLike | None = static(None, check=dtype_option)

    state_type = ScaleByLionState

    def init_buffers(self, params):
        return (tree_utils.zeros_like(params, self.mu_dtype),)

    def element(self, s, g, m):
        u = jnp.sign(ema_step(m, g, s.b1))               # u_t = sign(β1 m_{t-1} + (1 - β1) g_t)
        m = ema_step(m, g, s.b2)                         # m_t = β2 m_{t-1} + (1 - β2) g_t
        return u, (m,)
