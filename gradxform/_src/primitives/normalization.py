"""Normalising the updates to unit global norm (the ascent direction of SAM)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.clipping import global_norm, norm_dtype
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import cast_scalars, real_precision
from gradxform._src.protocol.transformation import Transformation


class NormalizeState(NamedTuple):
    """`normalize` keeps no state."""


@pytree_dataclass
class normalize(Transformation):
    """Divides every update by their global norm: u_t = g_t / ‖g_t‖.

        ‖g‖ = √(Σ_leaves Σ_i |g_i|²)

    Only the direction is kept; SAM's adversarial step ε = ρ g/‖g‖ is
    `chain(normalize(), scale(ρ))`. A zero gradient gives NaN updates (0/0), as in optax's
    `contrib.normalize`, whose numbers this keeps. The fast path fuses it at the head of a run
    of elementwise transformations, like `clip_by_global_norm`.

    References:
      Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently
      Improving Generalization", ICLR 2021, equation (2).
    """

    def init(self, params):
        return NormalizeState()

    def update(self, updates, state, params=None, **extra_args):
        scalars, state = self.tree_scalars(updates, state)
        cast: dict = {}

        def one(g):
            dtype = real_precision(g)
            if dtype not in cast:
                cast[dtype] = cast_scalars(scalars, dtype)
            return self.element(cast[dtype], g)[0]

        return jax.tree.map(one, updates), state

    # The two halves of update, for the fast path (see protocol/elementwise.py).
    def tree_scalars(self, updates, state):
        """‖g‖ over the whole tree (in float32 for 16-bit leaves), and the (empty) state."""
        return {"norm": global_norm(updates).astype(norm_dtype(updates))}, state

    def element(self, s, g):
        return (g / s.norm).astype(jnp.result_type(g)), ()   # u = g / ‖g‖
