"""Norms whose gradient is finite at zero, and a gradient scaled on the backward pass only."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def safe_norm(x: ArrayLike, min_norm: ArrayLike, ord: int | float | str | None = None,  # noqa: A002
              axis: None | tuple[int, ...] | int = None, keepdims: bool = False) -> jax.Array:
    """max(‖x‖, min_norm), with gradient 0 (not NaN) where ‖x‖ ≤ min_norm.

    `jnp.maximum(jnp.linalg.norm(x), min_norm)` has a NaN gradient at x = 0, because the
    derivative of the norm there is 0/0 and the untaken branch still enters the backward pass.
    Where the norm is at most `min_norm`, the norm is taken of ones instead, so its gradient is
    finite, and the result is `min_norm`.

    Args:
      x: an array.
      min_norm: the lower bound of the result.
      ord: the order of the norm, as `jnp.linalg.norm`'s `ord`.
      axis: the axis or the two matrix axes to reduce, as `jnp.linalg.norm`'s `axis`.
      keepdims: keep the reduced axes with size one.

    Returns:
      max(‖x‖, min_norm).
    """
    x = jnp.asarray(x)
    norm = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=True)
    small = norm <= min_norm
    masked = jnp.where(small, jnp.ones_like(x), x)
    if not keepdims:
        norm = jnp.squeeze(norm, axis=axis)
        small = norm <= min_norm
    return jnp.where(small, min_norm, jnp.linalg.norm(masked, ord=ord, axis=axis,
                                                      keepdims=keepdims))


def safe_root_mean_squares(x: ArrayLike, min_rms: ArrayLike) -> jax.Array:
    """max(√mean(|x|²), min_rms), with gradient 0 (not NaN) where the RMS is at most min_rms.

    Args:
      x: an array (complex allowed: |x|² is taken).
      min_rms: the lower bound of the result.

    Returns:
      max(RMS(x), min_rms).
    """
    x = jnp.asarray(x)

    def rms(v):
        return jnp.sqrt(jnp.mean(jnp.real(v * jnp.conj(v))))

    small = rms(x) <= min_rms
    return jnp.where(small, min_rms, rms(jnp.where(small, jnp.ones_like(x), x)))


@jax.custom_vjp
def _scaled_identity(inputs: Any, scale: ArrayLike) -> Any:
    return inputs


def _scaled_identity_fwd(inputs, scale):
    return inputs, scale


def _scaled_identity_bwd(scale, cotangents):
    return jax.tree.map(lambda c: c * scale, cotangents), None


_scaled_identity.defvjp(_scaled_identity_fwd, _scaled_identity_bwd)


def scale_gradient(inputs: Any, scale: ArrayLike) -> Any:
    """The identity on the forward pass; the gradient through it is multiplied by `scale`.

        forward: y = x        backward: ∂L/∂x = scale · ∂L/∂y

    `scale = 1` returns `inputs` itself and `scale = 0` is `jax.lax.stop_gradient` (both decided
    for a concrete Python scale, as optax).

    Args:
      inputs: a tree of arrays.
      scale: the factor of the gradient on the backward pass.

    Returns:
      `inputs`, whose gradient is scaled by `scale`.
    """
    if isinstance(scale, int | float):
        if scale == 1.0:
            return inputs
        if scale == 0.0:
            return jax.lax.stop_gradient(inputs)
    return _scaled_identity(inputs, scale)
