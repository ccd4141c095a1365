"""Moment updates of whole trees, the building blocks of optax's adaptive transformations.

optax 0.2.8 exports them as `optax.tree_utils.tree_update_moment` (and `optax.tree.update_moment`,
`optax.update_moment`); gradxform's transformations use `moments.ema_step` leaf by leaf, and these
are the same equation applied to every leaf of a tree (None leaves stay None).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradxform._src.primitives.moments import bias_correction, ema_step
from gradxform._src.protocol.tree_utils import is_none


def tree_update_moment(updates: Any, moments: Any, decay: jax.Array | float,
                       order: int | float) -> Any:
    """The EMA of the `order`-th power of the updates: m_t = β m_{t-1} + (1 - β) g_t^k.

    Args:
      updates: g_t, a tree.
      moments: m_{t-1}, a tree of the same structure.
      decay: β.
      order: k.

    Returns:
      m_t.
    """
    return jax.tree.map(
        lambda g, m: None if g is None else ema_step(m, g ** order, decay),
        updates, moments, is_leaf=is_none)


def tree_update_infinity_moment(updates: Any, moments: Any, decay: ArrayLike,
                                eps: ArrayLike) -> Any:
    """The exponentially weighted infinity norm (AdaMax): u_t = max(|g_t| + ε, β u_{t-1}).

    Args:
      updates: g_t, a tree.
      moments: u_{t-1}, a tree of the same structure.
      decay: β.
      eps: ε, added to |g_t|.

    Returns:
      u_t.

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1.
    """
    return jax.tree.map(
        lambda g, u: None if g is None else jnp.maximum(jnp.abs(g) + eps, decay * u),
        updates, moments, is_leaf=is_none)


def _orderth_norm(g: jax.Array, order: int | float) -> jax.Array:
    """|g|^k, for complex g too (|g|² = g·ḡ, raised to k/2)."""
    if jnp.isrealobj(g):
        return g ** order
    half_order = order / 2
    if float(half_order).is_integer():
        half_order = int(half_order)
    return (g.real ** 2 + g.imag ** 2) ** half_order


def tree_update_moment_per_elem_norm(updates: Any, moments: Any, decay: jax.Array | float,
                                     order: int | float) -> Any:
    """The EMA of the `order`-th power of each element's magnitude: m_t = β m_{t-1} + (1-β)|g_t|^k.

    For real leaves |g|^k is written g^k (as optax), which equals |g|^k for even k; for complex
    leaves it is (Re g² + Im g²)^{k/2}, real.

    Args:
      updates: g_t, a tree.
      moments: m_{t-1}, a tree of the same structure.
      decay: β.
      order: k.

    Returns:
      m_t.
    """
    return jax.tree.map(
        lambda g, m: None if g is None else ema_step(m, _orderth_norm(g, order), decay),
        updates, moments, is_leaf=is_none)


def tree_bias_correction(moment: Any, decay: ArrayLike, count: ArrayLike) -> Any:
    """m̂_t = m_t / (1 - β^t), optax's name for `gradxform`'s bias correction.

    1 - β^t is computed in the hyperparameter's precision and applied to each leaf in its own
    dtype (a bfloat16 moment stays bfloat16). It is applied as a product with 1/(1 - β^t) (see
    `moments.bias_correction`), so it agrees with optax's quotient to the last bit or two.

    Args:
      moment: m_t, a tree.
      decay: β.
      count: t, the number of steps averaged.

    Returns:
      m̂_t.
    """
    return bias_correction(moment, decay, count)
