"""Variants of Adam that change its second moment or its momentum: AdaBelief, Yogi, Adan.

Each keeps Adam's first moment m_t = β1 m_{t-1} + (1 - β1) g_t and its bias corrections, and
changes what the update is divided by (AdaBelief, Yogi) or what it follows (Adan). All three
are elementwise: each coordinate's update reads only that coordinate's gradient and buffers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.moments import ema_step, one_minus_power
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative, static
from gradxform._src.protocol.transformation import safe_increment, zero_count

_unit = in_interval(0, 1, "[)")


class ScaleByBeliefState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


@pytree_dataclass(positional=4)
class scale_by_belief(ElementwiseTransformation):
    """AdaBelief's direction: Adam divided by the spread of g_t around its prediction m_t.

        m_t = β1 m_{t-1} + (1 - β1) g_t
        s_t = β2 s_{t-1} + (1 - β2) (g_t - m_t)² + ε_root
        u_t = m̂_t / (√ŝ_t + ε),    m̂_t = m_t / (1 - β1^t),  ŝ_t = s_t / (1 - β2^t)

    Adam divides by the root of the EMA of g²; AdaBelief by that of (g - m)², the squared
    distance between the observed gradient and the one the momentum predicted. Where the
    gradient is steady s_t is small and the step large ("belief" in the gradient); where it
    jumps around its mean the step is small. ε_root is added to s_t and stored with it, as in
    the paper's Algorithm 1 and optax (`nu` holds s_t).

    With `nesterov=True`, m̂_t is the look-ahead β1 m_t/(1 - β1^{t+1}) + (1 - β1) g_t/(1 - β1^t),
    as in `scale_by_adam(nesterov=True)`.

    Args:
      b1: β1 in [0, 1).
      b2: β2 in [0, 1).
      eps: ε ≥ 0, added outside the root (optax 1e-16).
      eps_root: ε_root ≥ 0, added to s_t at every step and stored with it (optax 1e-16); keep
        it non-zero when differentiating through the update (meta-learning). The paper's
        Algorithm 2 adds one ε in both places: `eps=ε, eps_root=ε`.
      nesterov: use the look-ahead first moment.

    References:
      Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
      Gradients", NeurIPS 2020, Algorithm 2.
    """

    b1: float = hyperparameter(0.9, check=_unit)
    b2: float = hyperparameter(0.999, check=_unit)
    eps: float = hyperparameter(1e-16, check=non_negative)
    eps_root: float = hyperparameter(1e-16, check=non_negative)
    nesterov: bool = static(False)

    state_type = ScaleByBeliefState

    def init_buffers(self, params):
        return tree_utils.zeros_like(params), tree_utils.real_zeros_like(params)

    def step_scalars(self, h, t):
        scalars = dict(b1=h.b1, b2=h.b2, eps=h.eps, eps_root=h.eps_root,
                       c1=1 / one_minus_power(h.b1, t), c2=1 / one_minus_power(h.b2, t))
        if self.nesterov:
            scalars["c1_next"] = 1 / one_minus_power(h.b1, safe_increment(t))
        return scalars

    def element(self, s, g, m, v):
        m = ema_step(m, g, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) g_t
        v = ema_step(v, abs_sq(g - m), s.b2)             # s_t = β2 s_{t-1} + (1 - β2)(g_t - m_t)²
        v = v + s.eps_root                               #       + ε_root
        if self.nesterov:                                # β1 m̂_{t+1} + (1 - β1) ĝ_t
            m_hat = s.b1 * (m * s.c1_next) + (1 - s.b1) * (g * s.c1)
        else:
            m_hat = m * s.c1                             # m̂_t = m_t / (1 - β1^t)
        return m_hat / (jnp.sqrt(v * s.c2) + s.eps), (m, v)


class ScaleByYogiState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


@pytree_dataclass(positional=5)
class scale_by_yogi(ElementwiseTransformation):
    """Yogi's direction: Adam whose second moment moves additively, by at most (1 - β2) g_t².

        m_t = β1 m_{t-1} + (1 - β1) g_t
        v_t = v_{t-1} - (1 - β2) sign(v_{t-1} - g_t²) g_t²
        u_t = m̂_t / (√(v̂_t + ε_root) + ε),    m̂_t = m_t / (1 - β1^t),  v̂_t = v_t / (1 - β2^t)

    Adam's v_t - v_{t-1} = -(1 - β2)(v_{t-1} - g_t²) shrinks v by a fraction of itself when
    the gradients become small, so the effective learning rate can grow quickly; Yogi's change
    has the same sign but the size (1 - β2) g_t², so v decreases slowly and only as far as the
    gradients do.

    As optax, this initialises both m_0 and v_0 to `initial_accumulator_value` and applies
    Adam's bias corrections (the paper's Algorithm 2 starts m from 0 and corrects no bias);
    `yogi` gives optax's numbers. The state is optax's `ScaleByAdamState(count, mu,
    nu)` under its own name.

    Args:
      b1: β1 in [0, 1).
      b2: β2 in [0, 1).
      eps: ε ≥ 0, added outside the root (optax and the paper 1e-3).
      eps_root: ε_root ≥ 0, added inside the root (for differentiating through the update).
      initial_accumulator_value: m_0 = v_0 ≥ 0 (optax 1e-6). A schedule is read at step 0.

    References:
      Zaheer, Reddi, Sachan, Kale & Kumar, "Adaptive Methods for Nonconvex Optimization",
      NeurIPS 2018, Algorithm 2.
    """

    b1: float = hyperparameter(0.9, check=_unit)
    b2: float = hyperparameter(0.999, check=_unit)
    eps: float = hyperparameter(1e-3, check=non_negative)
    eps_root: float = hyperparameter(0.0, check=non_negative)
    initial_accumulator_value: float = hyperparameter(1e-6, check=non_negative)

    state_type = ScaleByYogiState

    def init_buffers(self, params):
        v0 = self.at(zero_count()).initial_accumulator_value
        mu = tree_utils.full_like(params, v0)
        nu = tree_utils.full_like(tree_utils.real_zeros_like(params), v0)
        return mu, nu

    def step_scalars(self, h, t):
        return dict(b1=h.b1, b2=h.b2, eps=h.eps, eps_root=h.eps_root,
                    c1=1 / one_minus_power(h.b1, t), c2=1 / one_minus_power(h.b2, t))

    def element(self, s, g, m, v):
        g2 = abs_sq(g)
        m = ema_step(m, g, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) g_t
        v = v - (1 - s.b2) * jnp.sign(v - g2) * g2       # v_t = v_{t-1} - (1 - β2) sign(·) g_t²
        m_hat = m * s.c1                                 # m̂_t = m_t / (1 - β1^t)
        v_hat = v * s.c2                                 # v̂_t = v_t / (1 - β2^t)
        return m_hat / (jnp.sqrt(v_hat + s.eps_root) + s.eps), (m, v)


class ScaleByAdanState(NamedTuple):
    count: Any
    m: Any
    v: Any
    n: Any
    prev_grad: Any

    @property
    def g(self):
        """optax's name of `prev_grad`, the previous step's gradient."""
        return self.prev_grad

    @property
    def t(self):
        """optax's name of `count`."""
        return self.count


@pytree_dataclass(positional=5)
class scale_by_adan(ElementwiseTransformation):
    """Adan's direction: Nesterov momentum estimated from the change of the gradient.

        Δ_t = g_t - g_{t-1}   (Δ_1 = 0)
        m_t = β1 m_{t-1} + (1 - β1) g_t
        v_t = β2 v_{t-1} + (1 - β2) Δ_t
        n_t = β3 n_{t-1} + (1 - β3) (g_t + w Δ_t)²
        u_t = (m̂_t + w v̂_t) / (√(n̂_t + ε_root) + ε),   x̂_t = x_t / (1 - β^t) for each EMA

    g_t + w Δ_t extrapolates the gradient ahead, so the method follows the gradient at a
    look-ahead point without evaluating it there. β is the decay of each EMA, as in optax and
    the authors' code; the paper writes the same EMAs with β_paper = 1 - β (its m_k = (1 - β1)
    m_{k-1} + β1 g_k with β1 = 0.02 is this m_t with β1 = 0.98).

    Two weights w of the difference are in use, and `lookahead` picks one:
    - "optax" (default): w = 1 - β2 (0.08 with β2 = 0.92), optax's `scale_by_adan`, whose numbers
      `adan` reproduces;
    - "paper": w = β2 (0.92), the paper's Algorithm 1 (its 1 - β_paper,2) and the authors' code.
    Both start the EMAs from zero and correct their bias (the paper's Algorithm 1 starts from
    m_0 = g_0, n_0 = g_0² instead).

    The state holds g_{t-1} in `prev_grad`. Its fields map to optax's `ScaleByAdanState(m, v, n,
    g, t)` as m, v, n -> m, v, n; prev_grad -> g; count -> t (first here, as in every state that
    counts steps).

    Args:
      b1: β1 in [0, 1), decay of the gradients' EMA (0.98).
      b2: β2 in [0, 1), decay of the gradient differences' EMA (0.92).
      b3: β3 in [0, 1), decay of the squared look-ahead gradients' EMA (0.99).
      eps: ε ≥ 0, added outside the root.
      eps_root: ε_root ≥ 0, added inside the root (0 here as in optax's `scale_by_adan`;
        optax's `adan` passes 1e-8).
      lookahead: "optax" or "paper", the weight w of Δ_t (see above).

    References:
      Xie, Zhou, Li, Lin & Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
      Optimizing Deep Models", IEEE TPAMI 2024 (arXiv:2208.06677), Algorithm 1.
    """

    b1: float = hyperparameter(0.98, check=_unit)
    b2: float = hyperparameter(0.92, check=_unit)
    b3: float = hyperparameter(0.99, check=_unit)
    eps: float = hyperparameter(1e-8, check=non_negative)
    eps_root: float = hyperparameter(0.0, check=non_negative)
    lookahead: str = static(
        "optax", check=lambda x: None if x in ("optax", "paper") else "'optax' or 'paper'"
    )

    state_type = ScaleByAdanState

    def init_buffers(self, params):
        # One fresh array per buffer: buffers that share an array cannot be donated to a step.
        return (tree_utils.zeros_like(params), tree_utils.zeros_like(params),
                tree_utils.real_zeros_like(params), tree_utils.zeros_like(params))

    def step_scalars(self, h, t):
        return dict(b1=h.b1, b2=h.b2, b3=h.b3, eps=h.eps, eps_root=h.eps_root,
                    w=(1 - h.b2) if self.lookahead == "optax" else h.b2,
                    c1=1 / one_minus_power(h.b1, t), c2=1 / one_minus_power(h.b2, t),
                    c3=1 / one_minus_power(h.b3, t), has_prev=t > 1)

    def element(self, s, g, m, v, n, g_prev):
        diff = jnp.where(s.has_prev, g - g_prev, 0)     # Δ_t = g_t - g_{t-1}, 0 at the first step
        m = ema_step(m, g, s.b1)                         # m_t = β1 m_{t-1} + (1 - β1) g_t
        v = ema_step(v, diff, s.b2)                      # v_t = β2 v_{t-1} + (1 - β2) Δ_t
        n = ema_step(n, abs_sq(g + s.w * diff), s.b3)    # n_t = ... + (1 - β3)(g_t + w Δ_t)²
        direction = m * s.c1 + s.w * (v * s.c2)          # m̂_t + w v̂_t
        return direction / (jnp.sqrt(n * s.c3 + s.eps_root) + s.eps), (m, v, n, g)
