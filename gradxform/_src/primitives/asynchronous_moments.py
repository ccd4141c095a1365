"""Adam variants that divide g_t by the second moment of the steps before it: ADOPT, ACProp.

Adam divides m_t by √v_t, and v_t contains g_t²: the step and its scale are correlated, which
is what lets Adam diverge for some β2 (Reddi et al. 2018). ADOPT and ACProp take the scale from
v_{t-1} (s_{t-1}), which does not contain g_t ("asynchronous" in ACProp's words), and both are
elementwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.adam_family import ScaleByAdamState
from gradxform._src.primitives.adam_variants import ScaleByBeliefState
from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import float_count

_unit = in_interval(0, 1, "[)")


def quarter_power_of_step(count: jax.Array) -> jax.Array:
    """c(t) = t^(1/4), ADOPT's default clipping threshold at step index t (0 at the first step)."""
    return float_count(count) ** 0.25


@pytree_dataclass(positional=4)
class scale_by_adopt(ElementwiseTransformation):
    """ADOPT's direction: momentum of the gradients normalised by the previous second moment.

        v_0 = g_0²,  m_0 = 0,  u_0 = 0                              (the first step only measures)
        m_t = β1 m_{t-1} + (1 - β1) clip(g_t / max(√v_{t-1}, ε), c(t))
        v_t = β2 v_{t-1} + (1 - β2) g_t²
        u_t = m_t        (Nesterov: β1 m_t + (1 - β1) clip(g_t / max(√v_{t-1}, ε), c(t)))

    with t the step index (0 at the first step) and clip(x, c) = min(max(x, -c), c). Because
    v_{t-1} does not contain g_t, the normalised gradient is an unbiased direction whatever β2,
    which is the paper's fix of Adam's non-convergence; the clipping by c(t) = t^(1/4)
    (`clip_value_fn`) is the paper's practical guard for the first steps. No bias correction:
    v starts at g_0² and m at the first normalised gradient's scale. The numbers are optax's
    `contrib.scale_by_adopt`; the state is its `ScaleByAdamState(count, mu, nu)`.

    Args:
      b1: β1 in [0, 1).
      b2: β2 in [0, 1) (the paper's default 0.9999).
      eps: ε ≥ 0, the floor of √v_{t-1}.
      mu_dtype: the dtype of m (default: the params').
      nesterov: return the look-ahead β1 m_t + (1 - β1) (normalised g_t).
      use_clipping: clip the normalised gradient to [-c(t), c(t)].
      clip_value_fn: c, a function of the int32 step index t (t^(1/4) by default).

    References:
      Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate",
      NeurIPS 2024.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.9999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-6, check=non_negative)
    mu_dtype: DTypeLike | None = static(None)
    nesterov: bool = static(False)
    use_clipping: bool = static(True)
    clip_value_fn: Callable[[jax.Array], jax.Array] = static(
        quarter_power_of_step,
        check=lambda f: None if callable(f) else "a function of the step index")

    state_type = ScaleByAdamState

    def init_buffers(self, params):
        return tree_utils.zeros_like(params, self.mu_dtype), tree_utils.real_zeros_like(params)

    def step_scalars(self, h, t):
        later = t > 1                                    # not the first step (index t - 1 > 0)
        scalars: dict[str, Any] = dict(
            eps=h.eps, b1=jnp.where(later, h.b1, 1), b2=jnp.where(later, h.b2, 0))
        if self.use_clipping:
            scalars["clip"] = self.clip_value_fn(t - 1)
        return scalars

    def element(self, s, g, m, v):
        x = g / jnp.maximum(jnp.sqrt(v), s.eps)          # g_t / max(√v_{t-1}, ε)
        if self.use_clipping:
            x = jnp.clip(x, -s.clip, s.clip)             # clip(·, c(t))
        m = ema_step(m, x, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) x_t
        v = ema_step(v, abs_sq(g), s.b2)                 # v_t = β2 v_{t-1} + (1 - β2) g_t²
        u = ema_step(m, x, s.b1) if self.nesterov else m
        return u, (m, v)


@pytree_dataclass(positional=4)
class scale_by_acprop(ElementwiseTransformation):
    """ACProp's direction: g_t over the root of the belief s_{t-1} of the steps before it.

        m_t = β1 m_{t-1} + (1 - β1) g_t
        s_t = β2 s_{t-1} + (1 - β2) (g_t - m_{t-1})² + ε_root
        u_1 = g_1 / (1 + ε),   u_t = g_t / (√(s_{t-1} / (1 - β2^{t-1})) + ε)   for t > 1

    s is AdaBelief's spread of the gradient around its prediction ("momentum centering"), and
    the step is scaled by the previous one, s_{t-1}, which does not contain g_t ("asynchronous
    update"); the paper proves convergence for this pairing under weaker conditions than Adam.
    This is optax's `contrib.scale_by_acprop`, whose numbers it reproduces: the prediction is
    m_{t-1}, and the numerator is g_t (m_t is kept in the state). The state is
    `ScaleByBeliefState(count, mu, nu)`, as optax's.

    Args:
      b1: β1 in [0, 1).
      b2: β2 in [0, 1).
      eps: ε ≥ 0, added outside the root.
      eps_root: ε_root ≥ 0, added to s_t at every step and stored with it.

    References:
      Zhuang, Ding, Tang, Dvornek, Tatikonda & Duncan, "Momentum Centering and Asynchronous
      Update for Adaptive Gradient Methods", NeurIPS 2021 (arXiv:2110.05454).
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-16, check=non_negative)
    eps_root: ScalarOrSchedule = hyperparameter(1e-16, check=non_negative)

    state_type = ScaleByBeliefState

    def init_buffers(self, params):
        return tree_utils.zeros_like(params), tree_utils.real_zeros_like(params)

    def step_scalars(self, h, t):
        first = t == 1
        previous = jnp.where(first, t, t - 1)            # the count s_{t-1} has averaged
        return dict(b1=h.b1, b2=h.b2, eps=h.eps, eps_root=h.eps_root, first=first,
                    c2=1 / one_minus_power(h.b2, previous))

    def element(self, s, g, m, v):
        m_new = ema_step(m, g, s.b1)                     # m_t = β1 m_{t-1} + (1 - β1) g_t
        v_new = ema_step(v, abs_sq(g - m), s.b2)         # s_t = ... + (1 - β2)(g_t - m_{t-1})²
        v_new = v_new + s.eps_root                       #       + ε_root
        v_hat = jnp.where(s.first, 1, v * s.c2)          # ŝ_{t-1}, 1 at the first step
        return g / (jnp.sqrt(v_hat) + s.eps), (m_new, v_new)
