"""Applying updates to parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.transformation import Params, Updates


def apply_updates(params: Params, updates: Updates) -> Params:
    """θ ← θ + u, leaf by leaf, keeping each parameter's dtype.

    The sum is computed in the promoted dtype of the two leaves and cast back to the parameter's
    dtype, so bf16 params stay bf16 when updates come in float32. None leaves stay None.
    """
    tree_utils.check_same_structure(updates, params, "apply_updates", "updates", "params")
    # Casting θ + u back to an integer dtype would truncate every step to nothing.
    tree_utils.check_inexact(params, "apply_updates", "params")
    def add(p, u):
        p, u = jnp.asarray(p), jnp.asarray(u)
        dtype = jnp.promote_types(p.dtype, u.dtype)
        return (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)

    return jax.tree.map(add, params, updates)
