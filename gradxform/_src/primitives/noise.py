"""Annealed Gaussian noise added to the gradients (Neelakantan et al., 2015)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import constant, hyperparameter, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation, float_count, safe_increment


class AddNoiseState(NamedTuple):
    count: Any
    rng_key: Any


def as_key(key: ArrayLike | None) -> jax.Array:
    """A typed PRNG key from a typed key, raw key data (uint32[2]) or an integer seed (None: 0)."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    data = jnp.asarray(key)
    if data.dtype == jnp.uint32 and data.shape == (2,):
        return jax.random.wrap_key_data(data)
    return jax.random.key(data)


@pytree_dataclass(positional=3)
class add_noise(Transformation):
    """Adds Gaussian noise whose variance decays with the step count: u_t = g_t + σ_t z_t.

        σ_t² = η / t^γ,    z_t ~ N(0, I),    t = 1, 2, ...

    The paper writes σ_t² = η / (1 + t)^γ with t counted from 0; this is the same schedule.
    The noise helps very deep networks out of poor regions early in training and fades as the
    step count grows (the paper takes γ = 0.55 and η in {0.01, 0.3, 1}).

    The noise is drawn as optax draws it, so that the same key gives the same numbers: each
    step splits the state's key into the next key and a sample key, splits the sample key into
    one key per leaf of the updates (in tree order, None leaves left out) and draws each leaf's
    noise with `jax.random.normal` in the leaf's dtype. (It is not an
    `ElementwiseTransformation`: its update needs random draws, which `make_step` leaves to
    XLA; the rest of a chain is fused as usual.)

    Args:
      eta: η ≥ 0, the variance at the first step.
      gamma: γ ≥ 0, the exponent of the variance's decay.
      key: a typed PRNG key (`jax.random.key(0)`), raw key data (`jax.random.PRNGKey(0)`) or an
        integer seed. None uses the seed 0, as optax does. It is a leaf of the transformation:
        another key does not recompile, and `jax.vmap` over keys runs independent chains.
      seed: an integer seed, optax's older name for `key` (give one of them).

    References:
      Neelakantan, Vilnis, Le, Sutskever, Kaiser, Kurach & Martens, "Adding Gradient Noise
      Improves Learning for Very Deep Networks", arXiv:1511.06807, 2015.
    """

    eta: ScalarOrSchedule = hyperparameter(check=non_negative)
    gamma: ScalarOrSchedule = hyperparameter(check=non_negative)
    key: ArrayLike | None = constant(None)
    seed: int | None = static(None)

    def __post_init__(self):
        if self.seed is not None:
            if self.key is not None:
                raise ValueError(
                    f"add_noise: give key or seed, not both, got key={self.key!r} and "
                    f"seed={self.seed!r} (seed is optax's older name for key)")
            object.__setattr__(self, "key", self.seed)
            object.__setattr__(self, "seed", None)
        super().__post_init__()

    def init(self, params):
        return AddNoiseState(count=jnp.zeros([], jnp.int32), rng_key=as_key(self.key))

    def update(self, updates, state, params=None, **extra_args):
        hp = self.at(state.count)
        t = safe_increment(state.count)
        lookup = leaf_scalars(dict(                      # σ_t = √(η / t^γ)
            sigma=jnp.sqrt(hp.eta / float_count(t, hp.eta) ** hp.gamma)))
        rng_key, sample_key = jax.random.split(state.rng_key)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        keys = jax.random.split(sample_key, len(leaves))
        noisy = [g + lookup(g).sigma * jax.random.normal(k, jnp.shape(g), jnp.result_type(g))
                 for g, k in zip(leaves, keys, strict=True)]  # u_t = g_t + σ_t z_t
        return treedef.unflatten(noisy), AddNoiseState(count=t, rng_key=rng_key)
