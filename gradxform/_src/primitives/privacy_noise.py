"""The Gaussian mechanism of DP-SGD: per-example clipping, summing, and calibrated noise.

Each example's gradient is clipped to norm C, so that one example changes the sum by at most
C; Gaussian noise of standard deviation σC then makes the released mean differentially
private (Abadi et al. 2016). The privacy guarantee (ε, δ) follows from σ, the sampling rate
and the number of steps by a privacy accountant, which is outside this library.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.primitives.clipping import per_example_global_norm_clip
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import constant, integer_at_least, non_negative, static
from gradxform._src.protocol.transformation import Transformation


class DifferentiallyPrivateAggregateState(NamedTuple):
    rng_key: Any


def as_key_data(key_or_seed) -> jax.Array:
    """The raw uint32 data of a PRNG key given as a typed key, raw key data or an integer seed.

    The state keeps raw data rather than a typed key: it converts to numpy (comparisons,
    checkpoints) and draws the same numbers with JAX's default generator.
    """
    if isinstance(key_or_seed, jax.Array) and jnp.issubdtype(key_or_seed.dtype,
                                                             jax.dtypes.prng_key):
        return jax.random.key_data(key_or_seed)
    if isinstance(key_or_seed, jax.Array | np.ndarray) and key_or_seed.dtype == np.uint32:
        return jnp.asarray(key_or_seed)
    return jax.random.key_data(jax.random.key(key_or_seed))


@pytree_dataclass(positional=3)
class differentially_private_aggregate(Transformation):
    """DP-SGD's aggregation: clip each example's gradient, sum, add noise, average.

        ḡ_t = (Σ_i g_i · min(1, C / ‖g_i‖) + σ C ξ_t) / B,   ξ_t ~ N(0, I)

    over the B examples of the batch (axis 0 of every leaf of the updates: per-example
    gradients, e.g. `jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)`). The output
    has the params' shapes. ξ is drawn from the key in the state, split once per step into a new
    key and one key per leaf, as optax does: for the same key the noise is optax's, bit for bit.
    Because the updates carry the batch axis and the params do not, `update` does not compare
    the two; params, when given, serve to check the state (also in a chain that this leads).

    Args:
      l2_norm_clip: C ≥ 0, the norm each example's gradient is clipped to.
      noise_multiplier: σ ≥ 0, the noise's standard deviation in units of C.
      key: a PRNG key (typed, or raw uint32 data) or an integer seed for the noise; optax's
        default key(0) when None. The state holds the key's raw data (`rng_key`, where
        optax's holds the typed key); the draws are the same.
      seed: an integer seed instead of `key` (optax's older argument).

    References:
      Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar & Zhang, "Deep Learning with
      Differential Privacy", CCS 2016 (arXiv:1607.00133), Algorithm 1.
    """

    l2_norm_clip: float = constant(check=non_negative)
    noise_multiplier: float = constant(check=non_negative)
    key: Any = constant(None)
    seed: int | None = static(None, check=lambda s: None if s is None
                              else integer_at_least(0)(s))

    per_example_updates = True  # the updates carry a batch axis that params lack

    def _validate(self) -> None:
        if self.seed is not None and self.key is not None:
            raise ValueError("differentially_private_aggregate: pass key or seed, not both, "
                             f"got key={self.key!r} and seed={self.seed!r}")
        key = as_key_data(0 if self.key is None and self.seed is None
                          else self.seed if self.key is None else self.key)
        object.__setattr__(self, "key", key)

    def init(self, params):
        return DifferentiallyPrivateAggregateState(rng_key=self.key)

    def update(self, updates, state, params=None, **extra_args):
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        if not leaves:
            return updates, state
        batch = leaves[0].shape[0]
        clipped, _ = per_example_global_norm_clip(leaves, self.l2_norm_clip)
        new_key, *keys = jax.random.split(state.rng_key, len(leaves) + 1)
        std = self.l2_norm_clip * self.noise_multiplier
        noised = []
        for g, k in zip(clipped, keys, strict=True):
            xi = jax.random.normal(k, g.shape, g.dtype)
            noised.append((g + tree_utils.coef(std, g) * xi) / batch)
        return (jax.tree_util.tree_unflatten(treedef, noised),
                DifferentiallyPrivateAggregateState(rng_key=new_key))
