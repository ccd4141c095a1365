"""Momentum: exponential moving averages, the heavy-ball trace, Nesterov, bias correction.

Two conventions for momentum exist and both are here:
- EMA form (textbooks, Adam's first moment): v_t = β v_{t-1} + (1 - β) g_t  -> `ema`
- torch / heavy-ball form:                     v_t = μ v_{t-1} + g_t         -> `trace`
They differ by the factor (1 - β) on the gradient, i.e. by a rescaled learning rate: with a
constant learning rate, `chain(ema(β, debias=False), scale(-η))` equals
`chain(trace(β), scale(-(1 - β) η))`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation, leaf_scalars
from gradxform._src.protocol.fields import dtype_option, hyperparameter, in_interval, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Params, Updates, float_count


def ema_step(m: jax.Array, g: jax.Array | float, decay: jax.Array | float, *,
             decay_first: bool = False) -> jax.Array:
    """One step of an exponential moving average: m_t = β m_{t-1} + (1 - β) g_t.

    Every EMA of the library (Adam's moments, Lion, RMSProp, Sophia, Muon, Adafactor, `ema`,
    `ema_params`, schedule-free's interpolation) is this line. The arguments are one leaf's
    values already in a common precision, with β in that precision (elementwise
    transformations receive them so); a moment stored in a narrower dtype (`mu_dtype=bfloat16`)
    is updated in the gradients' precision and rounded once, when stored.

    The sum is written (1 - β) g + β m. Compiled, one of the two products is fused with the
    addition into one multiply-add (one rounding fewer), and which one depends on the order in
    which the sum is written, so the two orders differ in the last bit of about a fifth of the
    elements (float32). Adafactor's moments and the parameter averages have always been computed
    in the order β m + (1 - β) g (optax's order for Adafactor); `decay_first=True` keeps them
    so, bit for bit.

    Args:
      m: m_{t-1}, the average so far.
      g: g_t, the new value.
      decay: β.
      decay_first: write the sum as β m + (1 - β) g.

    Returns:
      m_t.
    """
    if decay_first:
        return decay * m + (1 - decay) * g
    return (1 - decay) * g + decay * m


def bias_correction(moment: Updates, decay: ArrayLike, count: ArrayLike) -> Updates:
    """m̂_t = m_t / (1 - β^t): undoes the pull of a zero-initialised EMA toward zero.

    `1 - β^t` is computed in the precision of the hyperparameter (in 16 bits β^t would round to 1)
    and cast to each leaf's dtype.

    Each leaf is multiplied by the one scalar 1/(1 - β^t) rather than divided by 1 - β^t: XLA
    rewrites a division by a shared scalar in ways that depend on how many leaves share it (into
    this product, or folded into the next division), so the quotient form gives a packed tree
    (`gradxform.pack`) results that differ in the last bit from the unpacked one. The product
    leaves XLA nothing to rewrite; it agrees with the quotient to float32 rounding.

    Args:
      moment: m_t, a tree of arrays.
      decay: β.
      count: t, the number of steps averaged.

    Returns:
      m̂_t, in the dtypes of `moment`.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §3.
    """
    lookup = leaf_scalars(dict(c=1 / one_minus_power(decay, count)))
    return jax.tree.map(lambda m: m * lookup(m).c, moment)


def one_minus_power(decay: ArrayLike, count: ArrayLike) -> jax.Array:
    """1 - β^t, written -expm1(t ln β) so that it keeps its digits when β is near 1.

    In float32, `1 - β**t` loses up to 2e-5 of 1 - 0.999^t at small t: 0.999 is stored as
    0.99900001 and the subtraction cancels. For a Python float β, ln β is taken in double
    precision, so only t ln β and expm1 round (a few ulps, as torch, which computes it in
    double).
    """
    t = float_count(count, decay)
    if isinstance(decay, int | float):
        log_decay: float | jax.Array = math.log(decay) if decay > 0 else -math.inf
    else:
        log_decay = jnp.log(decay)
    return -jnp.expm1(t * log_decay)


def decay_from_half_life(half_life: float) -> float:
    """β such that a sample's weight halves after `half_life` steps: β = 0.5^(1/h)."""
    if not half_life > 0:
        raise ValueError(f"decay_from_half_life: half_life must be > 0, got {half_life!r}")
    return 0.5 ** (1.0 / half_life)


def half_life_from_decay(decay: float) -> float:
    """Steps after which a sample's weight in an EMA with decay β halves: h = ln 0.5 / ln β."""
    if not 0 < decay < 1:
        raise ValueError(f"half_life_from_decay: decay must be in (0, 1), got {decay!r}")
    return math.log(0.5) / math.log(decay)


def effective_window(decay: float) -> float:
    """The EMA's effective averaging window 1/(1 - β) (β = 0.9 averages about 10 steps)."""
    if not 0 <= decay < 1:
        raise ValueError(f"effective_window: decay must be in [0, 1), got {decay!r}")
    return 1.0 / (1.0 - decay)


class EmaState(NamedTuple):
    count: Any
    ema: Any


@pytree_dataclass(positional=3)
class ema(ElementwiseTransformation):
    """Exponential moving average of the updates, the EMA form of momentum.

        v_t = β v_{t-1} + (1 - β) g_t,     u_t = v_t / (1 - β^t)  (if debias)  else v_t

    With `debias=False` this is the textbook momentum (Ng's "gradient descent with
    momentum"); `trace` gives torch's form v_t = μ v_{t-1} + g_t.

    Args:
      decay: β in [0, 1).
      debias: divide by 1 - β^t so that early averages are not biased toward zero.
      accumulator_dtype: dtype of v (default: the params' dtype, float32 for 16-bit params).

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §3 (debiasing).
    """

    decay: ScalarOrSchedule = hyperparameter(check=in_interval(0, 1, "[)"))
    debias: bool = static(True)
    accumulator_dtype: DTypeLike | None = static(None, check=dtype_option)

    state_type = EmaState

    def init_buffers(self, params):
        return (tree_utils.zeros_like(params, self.accumulator_dtype),)

    def step_scalars(self, hp, t):
        return dict(decay=hp.decay, c=1 / one_minus_power(hp.decay, t) if self.debias else None)

    def element(self, s, g, v):
        v = ema_step(v, g, s.decay)                      # v_t = β v_{t-1} + (1 - β) g_t
        return (v * s.c if self.debias else v), (v,)     # v̂_t = v_t / (1 - β^t)


class TraceState(NamedTuple):
    count: Any
    trace: Any


@pytree_dataclass(positional=3)
class trace(ElementwiseTransformation):
    """Heavy-ball momentum in torch's form, with optional dampening and Nesterov.

        v_t = μ v_{t-1} + (1 - d) g_t      (v_1 = g_1, as torch initialises the buffer)
        u_t = v_t                          (heavy ball, Polyak 1964)
        u_t = g_t + μ v_t                  (nesterov=True: Sutskever et al. 2013, torch's form)

    The Nesterov form here is the rearranged one torch uses: the gradient is taken at the
    current params. It is the look-ahead method v_t = μ v_{t-1} + ∇L(θ_{t-1} - η μ v_{t-1})
    written in the variable φ = θ - η μ v; `nesterov_lookahead_params` gives the look-ahead
    point for users who want the original form.

    Args:
      decay: μ in [0, 1]; μ = 1 is plain accumulation, v_t = Σ_s (1 - d) g_s (as optax allows).
      nesterov: use Nesterov momentum.
      accumulator_dtype: dtype of v (default: the params' dtype, float32 for 16-bit params).
      dampening: d in [0, 1), torch's dampening (0 in optax and by default).

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
      Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in
      deep learning", ICML 2013.
    """

    decay: ScalarOrSchedule = hyperparameter(check=in_interval(0, 1, "[]"))
    nesterov: bool = static(False)
    accumulator_dtype: DTypeLike | None = static(None, check=dtype_option)
    dampening: ScalarOrSchedule = hyperparameter(0.0, check=in_interval(0, 1, "[)"))

    state_type = TraceState

    def init_buffers(self, params):
        return (tree_utils.zeros_like(params, self.accumulator_dtype),)

    def step_scalars(self, hp, t):
        return dict(decay=hp.decay, dampening=hp.dampening, first=t == 1)

    def element(self, s, g, v):
        v = jnp.where(s.first, g, s.decay * v + (1 - s.dampening) * g)  # v_1 = g_1
        if self.nesterov:
            return g + s.decay * v, (v,)                 # u_t = g_t + μ v_t
        return v, (v,)                                   # u_t = v_t


def nesterov_lookahead_params(params: Params, velocity: Updates, *, learning_rate: ArrayLike,
                              decay: ArrayLike) -> Params:
    """The look-ahead point θ - η μ v at which Nesterov's original method takes the gradient.

    With `opt = chain(trace(μ), scale_by_learning_rate(η))` and the gradient evaluated at
    `nesterov_lookahead_params(params, state[0].trace, learning_rate=η, decay=μ)`, the params
    follow Nesterov's accelerated gradient in its look-ahead form
        v_t = μ v_{t-1} + ∇L(θ_{t-1} - η μ v_{t-1}),   θ_t = θ_{t-1} - η v_t.

    Args:
      params: θ_{t-1}.
      velocity: v_{t-1}, `trace`'s state.
      learning_rate: η.
      decay: μ.

    Returns:
      θ_{t-1} - η μ v_{t-1}, in the params' dtypes.

    References:
      Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in
      deep learning", ICML 2013, eq. (3)-(4).
    """
    lookup = leaf_scalars(dict(lr=learning_rate, mu=decay))

    def lookahead(p, v):
        s = lookup(p)
        return p - (s.lr * s.mu) * v.astype(p.dtype)

    return jax.tree.map(lookahead, params, velocity)
