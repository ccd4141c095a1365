"""A Gaussian with diagonal covariance parametrized by its log scale (optax's `multi_normal`),
the search distribution of evolution strategies and perturbation-based gradient estimates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm
from jax.typing import ArrayLike


class MultiNormalDiagFromLogScale(NamedTuple):
    """N(μ, diag(σ²)) with σ = exp(log σ), a pytree of its two parameters.

    Args:
      loc: μ.
      log_scale: log σ (broadcast against μ).
    """

    loc: jax.Array
    log_scale: jax.Array

    @property
    def params(self) -> Sequence[jax.Array]:
        """[μ, log σ], the parameters a gradient with respect to the distribution is taken of."""
        return [self.loc, self.log_scale]

    def _param_shape(self) -> tuple[int, ...]:
        return jax.lax.broadcast_shapes(jnp.shape(self.loc), jnp.shape(self.log_scale))

    def sample(self, shape: Sequence[int], key: jax.Array) -> jax.Array:
        """x = μ + σ ε, ε ~ N(0, I), of shape `shape` + the parameters' shape."""
        eps = jax.random.normal(key, shape=tuple(shape) + self._param_shape())
        return eps * jnp.exp(self.log_scale) + self.loc

    def log_prob(self, x: ArrayLike) -> jax.Array:
        """log p(x) = Σ_i log N(x_i; μ_i, σ_i²), summed over the parameters' axes."""
        axes = tuple(-(i + 1) for i in range(len(self._param_shape())))
        return jnp.sum(norm.logpdf(x, loc=self.loc, scale=jnp.exp(self.log_scale)), axis=axes)


def multi_normal(loc: ArrayLike, log_scale: ArrayLike) -> MultiNormalDiagFromLogScale:
    """The diagonal Gaussian N(loc, diag(exp(log_scale)²)) (optax's name and arguments).

    Args:
      loc: the mean μ.
      log_scale: log σ, the log of the standard deviation of each coordinate.

    Returns:
      A distribution with `sample(shape, key)`, `log_prob(x)`, `params` and `log_scale`.
    """
    return MultiNormalDiagFromLogScale(jnp.asarray(loc), jnp.asarray(log_scale))
