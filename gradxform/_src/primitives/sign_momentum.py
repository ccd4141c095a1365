"""Lion: the sign of an interpolation of momentum and gradient (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, in_interval, positive, static
from gradxform._src.protocol.schedule import ScalarOrSchedule

_MODES = ("hard", "smooth", "refined")


class ScaleByLionState(NamedTuple):
    count: Any
    mu: Any


@pytree_dataclass(positional=3)
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
      mode: the sign of the interpolation x = β1 m_{t-1} + (1 - β1) g_t: "hard", sign(x), the
        paper's; "smooth", tanh(β_s x); "refined", x where |x| < 1 and sign(x) elsewhere
        (optax's variants).
      smooth_beta: β_s > 0 of the "smooth" mode.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, Algorithm 2.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    b2: ScalarOrSchedule = hyperparameter(0.99, check=in_interval(0, 1, "[)"))
    mu_dtype: DTypeLike | None = static(None)
    mode: str = static("hard", check=lambda x: None if x in _MODES else f"one of {_MODES}")
    smooth_beta: ScalarOrSchedule = hyperparameter(1.0, check=positive)

    state_type = ScaleByLionState

    def init_buffers(self, params):
        return (tree_utils.zeros_like(params, self.mu_dtype),)

    def element(self, s, g, m):
        x = ema_step(m, g, s.b1)                         # x = β1 m_{t-1} + (1 - β1) g_t
        if self.mode == "smooth":
            u = jnp.tanh(s.smooth_beta * x)              # u_t = tanh(β_s x)
        elif self.mode == "refined":
            u = jnp.where(jnp.abs(x) < 1, x, jnp.sign(x))
        else:
            u = jnp.sign(x)                              # u_t = sign(x)
        m = ema_step(m, g, s.b2)                         # m_t = β2 m_{t-1} + (1 - β2) g_t
        return u, (m,)
