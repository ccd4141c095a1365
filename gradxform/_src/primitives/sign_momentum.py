"""Lion: the sign of an interpolation of momentum and gradient (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import (
    dtype_option,
    hyperparameter,
    in_interval,
    positive,
    static,
)
from gradxform._src.protocol.schedule import ScalarOrSchedule

_MODES = ("hard", "smooth", "refined")


class ScaleByLionState(NamedTuple):
    count: Any
    mu: Any


@pytree_dataclass(positional=3)
class scale_by_lion(ElementwiseTransformation):
    """Lion's direction: one sign per coordinate, one moment buffer.

        c_t = β1 m_{t-1} + (1 - β1) g_t
        u_t = sign(c_t)
        m_t = β2 m_{t-1} + (1 - β2) g_t

    Every coordinate moves by exactly the learning rate, so Lion wants a learning rate 3-10x
    smaller than AdamW's and a weight decay 3-10x larger. It keeps one buffer instead of Adam's
    two: half the optimizer memory.

    `mode` replaces the sign by a function that is continuous at 0, as optax's option does:
    "smooth" is u_t = tanh(s c_t) with s = `smooth_beta`, "refined" is u_t = c_t where
    |c_t| < 1 and sign(c_t) elsewhere (the identity near 0, the sign beyond).

    Args:
      b1: β1 in [0, 1), the interpolation for the update (0.9).
      b2: β2 in [0, 1), the momentum's decay (0.99).
      mu_dtype: dtype of m (default: the params' dtype, float32 for 16-bit params).
      mode: "hard" (the sign, the paper's), "smooth" or "refined".
      smooth_beta: s > 0, the slope of tanh at 0 in the "smooth" mode (1.0).

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023, Algorithm 2.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    b2: ScalarOrSchedule = hyperparameter(0.99, check=in_interval(0, 1, "[)"))
    mu_dtype: DTypeLike | None = static(None, check=dtype_option)
    mode: str = static("hard", check=lambda x: None if x in _MODES else
                       "one of " + ", ".join(repr(m) for m in _MODES))
    smooth_beta: ScalarOrSchedule = hyperparameter(1.0, check=positive)

    state_type = ScaleByLionState

    def init_buffers(self, params):
        return (tree_utils.zeros_like(params, self.mu_dtype),)

    def step_scalars(self, hp, t):
        scalars = dict(b1=hp.b1, b2=hp.b2)
        if self.mode == "smooth":
            scalars["smooth_beta"] = hp.smooth_beta
        return scalars

    def element(self, s, g, m):
        c = ema_step(m, g, s.b1)                         # c_t = β1 m_{t-1} + (1 - β1) g_t
        if self.mode == "hard":
            u = jnp.sign(c)                              # u_t = sign(c_t)
        elif self.mode == "smooth":
            u = jnp.tanh(s.smooth_beta * c)              # u_t = tanh(s c_t)
        else:                                            # c_t inside (-1, 1), else sign(c_t)
            u = jnp.where(jnp.abs(c) < 1, c, jnp.sign(c))
        m = ema_step(m, g, s.b2)                         # m_t = β2 m_{t-1} + (1 - β2) g_t
        return u, (m,)
