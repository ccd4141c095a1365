"""Second moments per layer: NovoGrad (Ginsburg et al., 2019).

Adam keeps one second moment per coordinate; NovoGrad keeps one per layer (per leaf of the
params), the EMA of the squared norm of the layer's gradient, and normalizes each layer's
gradient by it before the momentum. The second moment then costs one number per leaf, and the
step is invariant to a rescaling of one layer's gradient. Because that number reads the whole
leaf, the update is not elementwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.adaptive import abs_sq, real_moment_dtype
from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars, map_leaves
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation, require_params, safe_increment

_unit = in_interval(0, 1, "[)")


class ScaleByNovogradState(NamedTuple):
    count: Any
    mu: Any
    nu: Any  # one number per leaf


@pytree_dataclass(positional=6)
class scale_by_novograd(Transformation):
    """NovoGrad's direction: momentum of layer-normalized gradients, with decoupled decay.

    For each layer l (a leaf of the params):

        v_t = ‖g_t‖²                                   (t = 1)
        v_t = β2 v_{t-1} + (1 - β2) ‖g_t‖²             (t > 1)
        m_t = β1 m_{t-1} + g_t / (√(v_t + ε_root) + ε) + λ θ_{t-1},    m_0 = 0
        u_t = m_t

    v starts at the first squared norm instead of 0, so it needs no bias correction; the
    momentum adds its new term without the factor 1 - β1 (the paper's Algorithm 1 and optax).
    The weight decay λ θ is added after the normalization, so it is not rescaled by v.

    Args:
      b1: β1 in [0, 1), the momentum (0.9; the paper takes 0.95 to 0.98).
      b2: β2 in [0, 1), the decay of the squared norms (0.25, as optax; the paper's
        experiments use 0.98).
      eps: ε ≥ 0, added outside the root.
      eps_root: ε_root ≥ 0, added inside the root.
      weight_decay: λ ≥ 0. The params are required whatever λ is, as in optax.
      mu_dtype: dtype of m (default: the params' dtype, float32 for 16-bit params).

    References:
      Ginsburg, Castonguay, Hrinchuk, Kuchaiev, Lavrukhin, Leary, Li, Nguyen, Zhang & Cohen,
      "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep
      Networks", arXiv:1905.11286, 2019, Algorithm 1.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.25, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    eps_root: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    weight_decay: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    mu_dtype: DTypeLike | None = static(None)

    def init(self, params):
        mu = tree_utils.zeros_like(params, self.mu_dtype)
        nu = jax.tree.map(lambda p: jnp.zeros([], real_moment_dtype(p)), params)
        return ScaleByNovogradState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "scale_by_novograd")
        hp = self.at(state.count)
        t = safe_increment(state.count)
        lookup = leaf_scalars(dict(b1=hp.b1, b2=hp.b2, eps=hp.eps, eps_root=hp.eps_root,
                                   weight_decay=hp.weight_decay))
        first = t == 1

        def step(g, m, v, p):
            v = tree_utils.in_update_precision(v, g)
            s = lookup(v)
            norm_sq = jnp.sum(abs_sq(tree_utils.widen(g, v)))      # ‖g_t‖²
            v = jnp.where(first, norm_sq, ema_step(v, norm_sq, s.b2))
            m = tree_utils.in_update_precision(m, g)
            s = lookup(m)
            g = tree_utils.widen(g, m)
            real = jnp.finfo(m.dtype).dtype             # v is real for complex params
            d = g / (jnp.sqrt(v.astype(real) + s.eps_root) + s.eps) \
                + s.weight_decay * p.astype(m.dtype)
            m = s.b1 * m + d                                # m_t = β1 m_{t-1} + d_t
            return m, m, v

        u, mu, nu = map_leaves(step, updates, state.mu, state.nu, params, num_outputs=3)
        u = tree_utils.cast_like(u, updates)
        mu = tree_utils.cast_like(mu, state.mu)
        nu = tree_utils.cast_like(nu, state.nu)
        return u, ScaleByNovogradState(count=t, mu=mu, nu=nu)
