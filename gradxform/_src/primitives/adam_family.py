"""The Adam family: Adam, NAdam, AMSGrad, AdaMax, RAdam.

Each keeps an EMA of gradients m (first moment) and of squared gradients v (second moment):
    m_t = β1 m_{t-1} + (1 - β1) g_t,      v_t = β2 v_{t-1} + (1 - β2) g_t²
and corrects their start-up bias, m̂_t = m_t / (1 - β1^t), v̂_t = v_t / (1 - β2^t).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import (
    ElementwiseTransformation,
    leaf_scalars,
    map_leaves,
)
from gradxform._src.protocol.fields import (
    dtype_option,
    hyperparameter,
    in_interval,
    non_negative,
    positive,
    static,
)
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    Transformation,
    Updates,
    float_count,
    safe_increment,
    zero_count,
)

_unit = in_interval(0, 1, "[)")


def _moments_init(params, mu_dtype, nu_dtype=None):
    mu = tree_utils.zeros_like(params, mu_dtype)
    nu = tree_utils.real_zeros_like(params, nu_dtype)
    return mu, nu


def _moments(lookup, g, m, v):
    """m_t and v_t of one leaf, each in the wider precision of g and its moment (the state
    stores them back in their own dtypes)."""
    m = tree_utils.in_update_precision(m, g)
    m = ema_step(m, tree_utils.widen(g, m), lookup(m).b1)
    v = tree_utils.in_update_precision(v, g)
    v = ema_step(v, abs_sq(tree_utils.widen(g, v)), lookup(v).b2)
    return m, v


def _bias_corrections(hp, t) -> dict:
    """β1, β2 and the factors 1/(1 - β1^t), 1/(1 - β2^t) of the step."""
    return dict(b1=hp.b1, b2=hp.b2,
                c1=1 / one_minus_power(hp.b1, t), c2=1 / one_minus_power(hp.b2, t))


def nesterov_mu_hat(mu: Updates, updates: Updates, b1: ArrayLike, count: jax.Array) -> Updates:
    """NAdam's look-ahead first moment (Dozat 2016, as in optax):
    m̂_t = β1 m_t / (1 - β1^{t+1}) + (1 - β1) g_t / (1 - β1^t).

    Args:
      mu: m_t.
      updates: g_t.
      b1: β1.
      count: t.

    Returns:
      m̂_t, in the precision of m_t.
    """
    lookup = leaf_scalars(dict(
        b1=b1, c1=1 / one_minus_power(b1, count),
        c1_next=1 / one_minus_power(b1, safe_increment(count))))

    def look_ahead(m, g):
        s = lookup(m)
        return s.b1 * (m * s.c1_next) + (1 - s.b1) * (tree_utils.widen(g, m) * s.c1)

    return jax.tree.map(look_ahead, mu, updates)


class ScaleByAdamState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


@pytree_dataclass(positional=5)
class scale_by_adam(ElementwiseTransformation):
    """Adam's direction: the bias-corrected first moment over the root of the second.

        m_t = β1 m_{t-1} + (1 - β1) g_t
        v_t = β2 v_{t-1} + (1 - β2) g_t²
        u_t = m̂_t / (√(v̂_t + ε_root) + ε),   m̂_t = m_t / (1 - β1^t),  v̂_t = v_t / (1 - β2^t)

    With `nesterov=True`, m̂_t is NAdam's look-ahead β1 m_t/(1 - β1^{t+1}) + (1 - β1) g_t/(1 - β1^t)
    (Dozat 2016, optax's form; torch's NAdam with its momentum schedule is `scale_by_nadam`).

    Args:
      b1: β1 in [0, 1).
      b2: β2 in [0, 1).
      eps: ε ≥ 0, added outside the root (as in the paper and torch).
      eps_root: ε_root ≥ 0, added inside the root (keeps the gradient of the update finite
        when differentiating through it, e.g. in meta-learning).
      mu_dtype, nu_dtype: dtypes in which m and v are stored (default: the params' dtype,
        float32 for 16-bit params). bf16 moments halve the optimizer's memory; each step still
        updates them in the gradients' precision and rounds once, when storing.
      nesterov: use NAdam's look-ahead first moment.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, Algorithm 1.
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    eps_root: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    mu_dtype: DTypeLike | None = static(None, check=dtype_option)
    nu_dtype: DTypeLike | None = static(None, check=dtype_option)
    nesterov: bool = static(False)

    state_type = ScaleByAdamState

    def init_buffers(self, params):
        return _moments_init(params, self.mu_dtype, self.nu_dtype)

    def step_scalars(self, hp, t):
        scalars = dict(b1=hp.b1, b2=hp.b2, eps=hp.eps, eps_root=hp.eps_root,
                       c1=1 / one_minus_power(hp.b1, t), c2=1 / one_minus_power(hp.b2, t))
        if self.nesterov:
            scalars["c1_next"] = 1 / one_minus_power(hp.b1, safe_increment(t))
        return scalars

    def element(self, s, g, m, v):
        m = ema_step(m, g, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) g_t
        v = ema_step(v, abs_sq(g), s.b2)                 # v_t = β2 v_{t-1} + (1 - β2) g_t²
        if self.nesterov:                                # β1 m̂_{t+1} + (1 - β1) ĝ_t
            m_hat = s.b1 * (m * s.c1_next) + (1 - s.b1) * (g * s.c1)
        else:
            m_hat = m * s.c1                             # m̂_t = m_t / (1 - β1^t)
        v_hat = v * s.c2                                 # v̂_t = v_t / (1 - β2^t)
        return m_hat / (jnp.sqrt(v_hat + s.eps_root) + s.eps), (m, v)


class ScaleByAmsgradState(NamedTuple):
    count: Any
    mu: Any
    nu: Any
    nu_max: Any


@pytree_dataclass(positional=7)
class scale_by_amsgrad(ElementwiseTransformation):
    """AMSGrad: Adam whose denominator never shrinks.

        v_max,t = max(v_max,t-1, v̂_t),           u_t = m̂_t / (√(v_max,t + ε_root) + ε)
            (max_of="debiased": optax; the max is taken over bias-corrected v̂)
        v_max,t = max(v_max,t-1, v_t),           u_t = m̂_t / (√(v_max,t / (1 - β2^t)) + ε)
            (max_of="raw": torch.optim.Adam(amsgrad=True); the max is over raw v, then corrected)

    The paper's Algorithm 1 corrects neither moment: u_t = m_t / (√(v_max,t + ε_root) + ε)
    with v_max,t = max(v_max,t-1, v_t) is `bias_correction_mu=False, bias_correction_nu=False`
    (optax's options). Without the correction of v, `max_of` makes no difference.

    Args: as `scale_by_adam`, plus
      max_of: "debiased" or "raw", where v's bias correction is applied (see above).
      bias_correction_mu: divide m_t by 1 - β1^t (default True, as optax).
      bias_correction_nu: divide v_t by 1 - β2^t (default True, as optax).

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    eps_root: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    mu_dtype: DTypeLike | None = static(None, check=dtype_option)
    bias_correction_mu: bool = static(True)
    bias_correction_nu: bool = static(True)
    max_of: str = static(
        "debiased", check=lambda x: None if x in ("debiased", "raw") else "'debiased' or 'raw'"
    )

    state_type = ScaleByAmsgradState

    def init_buffers(self, params):
        mu, nu = _moments_init(params, self.mu_dtype)
        return mu, nu, tree_utils.zeros_like(nu)

    def step_scalars(self, hp, t):
        return dict(_bias_corrections(hp, t), eps=hp.eps, eps_root=hp.eps_root)

    def element(self, s, g, m, v, v_max):
        m = ema_step(m, g, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) g_t
        v = ema_step(v, abs_sq(g), s.b2)                 # v_t = β2 v_{t-1} + (1 - β2) g_t²
        if not self.bias_correction_nu:
            v_max = jnp.maximum(v_max, v)                # v_max,t = max(v_max,t-1, v_t)
            v_hat = v_max
        elif self.max_of == "debiased":
            v_max = jnp.maximum(v_max, v * s.c2)         # v_max,t = max(v_max,t-1, v̂_t)
            v_hat = v_max
        else:
            v_max = jnp.maximum(v_max, v)                # v_max,t = max(v_max,t-1, v_t)
            v_hat = v_max * s.c2
        m_hat = m * s.c1 if self.bias_correction_mu else m   # m̂_t = m_t / (1 - β1^t)
        return m_hat / (jnp.sqrt(v_hat + s.eps_root) + s.eps), (m, v, v_max)


@pytree_dataclass(positional=3)
class scale_by_adamax(ElementwiseTransformation):
    """AdaMax: Adam with the infinity norm in place of the second moment.

        m_t = β1 m_{t-1} + (1 - β1) g_t,    u_t = m̂_t / u∞_t,    u∞_t = max(β2 u∞_{t-1}, |g_t| + ε)

    (ε inside the max, as optax and torch do, keeps the division finite.)

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)

    state_type = ScaleByAdamState

    def init_buffers(self, params):
        return _moments_init(params, None)

    def step_scalars(self, hp, t):
        return dict(b1=hp.b1, b2=hp.b2, eps=hp.eps, c1=1 / one_minus_power(hp.b1, t))

    def element(self, s, g, m, u):
        m = ema_step(m, g, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) g_t
        u = jnp.maximum(jnp.abs(g) + s.eps, s.b2 * u)    # u∞_t = max(β2 u∞_{t-1}, |g_t| + ε)
        return m * s.c1 / u, (m, u)                      # m̂_t / u∞_t


def _radam_rho(b2, rho_inf, count):
    """ρ_t = ρ_∞ - 2 t β2^t / (1 - β2^t), without subtracting two numbers near 2/(1 - β2).

    Both terms are ≈ 2/(1 - β2) (2000 for β2 = 0.999) while ρ_t starts near 5: in float32 the
    direct form leaves ρ_t wrong by ~0.03 and the rectifier r_t by ~1% at the first rectified
    steps. With a = -ln β2, x = t a and h(y) = y/(1 - e^{-y}) - 1 - y/2, the same quantity is
        ρ_t = t - (2/a) (h(x) - h(a)),
    where h(y) = y²/12 - y⁴/720 + y⁶/30240 - … (Bernoulli numbers) has no cancellation; it is
    used while x < 1/2, and the direct form, whose terms no longer nearly cancel, after.
    """
    t = float_count(count, b2)
    if isinstance(b2, int | float):
        a = -math.log(b2) if b2 > 0 else math.inf
    else:
        a = -jnp.log(b2)
    x = t * a

    def h(y):
        y2 = y * y
        c = (1 / 12, -1 / 720, 1 / 30240, -1 / 1209600, 1 / 47900160, -691 / 1307674368000.0,
             1 / 74724249600.0)  # B_2k / (2k)!
        return y2 * (c[0] + y2 * (c[1] + y2 * (c[2] + y2 * (c[3] + y2 * (c[4] + y2 * (
            c[5] + y2 * c[6]))))))

    small = x < 0.5
    x_small = jnp.where(small, x, 0.0)
    series = t - (2 / a) * (h(x_small) - h(a))
    one_minus_b2t = -jnp.expm1(-x)
    direct = rho_inf - 2 * t * (1 - one_minus_b2t) / one_minus_b2t
    return jnp.where(small, series, direct)


@pytree_dataclass(positional=5)
class scale_by_radam(Transformation):
    """RAdam: Adam with the variance of the adaptive learning rate rectified.

        ρ_∞ = 2/(1 - β2) - 1,    ρ_t = ρ_∞ - 2 t β2^t / (1 - β2^t)
        u_t = r_t m̂_t / (√(v̂_t + ε_root) + ε),  r_t = √((ρ_t-4)(ρ_t-2)ρ_∞ / ((ρ_∞-4)(ρ_∞-2)ρ_t))
                                                   if ρ_t ≥ threshold
        u_t = m̂_t                                  otherwise (momentum SGD while v is unreliable)

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    eps_root: ScalarOrSchedule = hyperparameter(0.0, check=non_negative)
    threshold: ScalarOrSchedule = hyperparameter(5.0, check=positive)
    nesterov: bool = static(False)

    def init(self, params):
        mu, nu = _moments_init(params, None)
        return ScaleByAdamState(count=zero_count(), mu=mu, nu=nu)

    # Not an ElementwiseTransformation: the adaptive direction is rounded to the gradients'
    # dtype before r_t scales it (for 16-bit params), a rounding an equation computed in the
    # moments' precision does not have.
    def update(self, updates, state, params=None, **extra_args):
        hp = self.at(state.count)
        t = safe_increment(state.count)
        rho_inf = 2.0 / (1.0 - hp.b2) - 1.0
        rho = _radam_rho(hp.b2, rho_inf, t)
        r = jnp.sqrt(
            (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
        )
        rectified = rho >= hp.threshold
        scalars = dict(_bias_corrections(hp, t), eps=hp.eps, eps_root=hp.eps_root, r=r)
        if self.nesterov:
            scalars["c1_next"] = 1 / one_minus_power(hp.b1, safe_increment(t))
        lookup = leaf_scalars(scalars)

        def step(g, m, v):
            m, v = _moments(lookup, g, m, v)
            s = lookup(m)
            if self.nesterov:                            # β1 m̂_{t+1} + (1 - β1) ĝ_t
                m_hat = s.b1 * (m * s.c1_next) + (1 - s.b1) * (tree_utils.widen(g, m) * s.c1)
            else:
                m_hat = m * s.c1                         # m̂_t = m_t / (1 - β1^t)
            s = lookup(v)
            v_hat = v * s.c2                             # v̂_t = v_t / (1 - β2^t)
            a = (m_hat / (jnp.sqrt(v_hat + s.eps_root) + s.eps)).astype(g.dtype)
            u = jnp.where(rectified, lookup(a).r * a, m_hat.astype(g.dtype))
            return u, m, v

        updates, m, v = map_leaves(step, updates, state.mu, state.nu, num_outputs=3)
        return updates, ScaleByAdamState(count=t, mu=m, nu=v)


class ScaleByNadamState(NamedTuple):
    count: Any
    mu_product: Any
    mu: Any
    nu: Any


@pytree_dataclass
class scale_by_nadam(Transformation):
    """NAdam with Dozat's momentum schedule, as torch.optim.NAdam computes it.

        μ_t = β1 (1 - ½ · 0.96^(t ψ)),    Π_t = ∏_{i≤t} μ_i
        m_t = β1 m_{t-1} + (1 - β1) g_t,  v_t = β2 v_{t-1} + (1 - β2) g_t²
        u_t = [(1 - μ_t)/(1 - Π_t) g_t + μ_{t+1}/(1 - Π_{t+1}) m_t] / (√v̂_t + ε)

    `scale_by_adam(nesterov=True)` is optax's NAdam (no momentum schedule).

    Args:
      b1, b2, eps: as Adam (torch: 0.9, 0.999, 1e-8).
      momentum_decay: ψ ≥ 0 (torch 4e-3).

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=_unit)
    b2: ScalarOrSchedule = hyperparameter(0.999, check=_unit)
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    momentum_decay: ScalarOrSchedule = hyperparameter(4e-3, check=non_negative)

    def init(self, params):
        mu, nu = _moments_init(params, None)
        return ScaleByNadamState(
            count=zero_count(), mu_product=jnp.ones([], jnp.float32), mu=mu, nu=nu
        )

    # Not an ElementwiseTransformation: the product Π_t is a number carried in the state from
    # step to step, not a buffer per leaf.
    def update(self, updates, state, params=None, **extra_args):
        hp = self.at(state.count)
        t = safe_increment(state.count)
        tf = float_count(t, hp.momentum_decay)
        mu_t = hp.b1 * (1.0 - 0.5 * 0.96 ** (tf * hp.momentum_decay))
        mu_next = hp.b1 * (1.0 - 0.5 * 0.96 ** ((tf + 1) * hp.momentum_decay))
        prod = (state.mu_product * mu_t).astype(state.mu_product.dtype)
        prod_next = prod * mu_next
        lookup = leaf_scalars(dict(
            _bias_corrections(hp, t), eps=hp.eps,
            c_g=(1.0 - mu_t) / (1.0 - prod), c_m=mu_next / (1.0 - prod_next)))

        def step(g, m, v):
            m, v = _moments(lookup, g, m, v)
            v_hat = v * lookup(v).c2                     # v̂_t = v_t / (1 - β2^t)
            s = lookup(m)
            u = (s.c_g * tree_utils.widen(g, m) + s.c_m * m) / (jnp.sqrt(v_hat) + lookup(v).eps)
            return u.astype(g.dtype), m, v

        updates, m, v = map_leaves(step, updates, state.mu, state.nu, num_outputs=3)
        return updates, ScaleByNadamState(count=t, mu_product=prod, mu=m, nu=v)
