"""Adam as Hugging Face transformers' AdamW writes it: ε added before the bias correction."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule

_unit = in_interval(0, 1, "[)")


class ScaleByAdamTransformersState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


@pytree_dataclass(positional=4)
class scale_by_adam_transformers(ElementwiseTransformation):
    """Adam's direction with ε added to √v_t before the bias correction.

        m_t = β1 m_{t-1} + (1 - β1) g_t
        v_t = β2 v_{t-1} + (1 - β2) g_t²
        u_t = √(1 - β2^t) / (1 - β1^t) · m_t / (√v_t + ε)  =  m̂_t / (√v̂_t + ε / √(1 - β2^t))

    The form of transformers' `AdamW` (and of the Cautious-optimizer authors' C-AdamW, which
    copies it): the step size √(1 - β2^t)/(1 - β1^t) is folded into the learning rate, so ε is
    effectively ε/√(1 - β2^t), about 31 ε at step 1 with β2 = 0.999. `scale_by_adam` adds ε to
    √v̂_t instead (the paper, torch and optax); the two agree once β2^t ≈ 0 or ε = 0.
    `correct_bias=False` drops both corrections (the BERT form), u_t = m_t / (√v_t + ε).

    Args:
      b1: β1 in [0, 1).
      b2: β2 in [0, 1).
      eps: ε ≥ 0 (transformers 1e-6).
      correct_bias: apply the step-size bias correction.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Section 2 (the
      form before Algorithm 1's last line: "the efficiency ... by changing the order").
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-6, check=non_negative)
    correct_bias: bool = static(True)

    state_type = ScaleByAdamTransformersState

    def init_buffers(self, params):
        return tree_utils.zeros_like(params), tree_utils.real_zeros_like(params)

    def step_scalars(self, hp, t):
        if not self.correct_bias:
            return dict(b1=hp.b1, b2=hp.b2, eps=hp.eps, step_size=1.0)
        step_size = jnp.sqrt(one_minus_power(hp.b2, t)) / one_minus_power(hp.b1, t)
        return dict(b1=hp.b1, b2=hp.b2, eps=hp.eps, step_size=step_size)

    def element(self, s, g, m, v):
        m = ema_step(m, g, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) g_t
        v = ema_step(v, abs_sq(g), s.b2)                 # v_t = β2 v_{t-1} + (1 - β2) g_t²
        return s.step_size * (m / (jnp.sqrt(v) + s.eps)), (m, v)
