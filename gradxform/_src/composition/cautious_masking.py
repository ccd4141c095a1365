"""The cautious mask: keep only the coordinates of an update that agree in sign with the gradient.

Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code"
(arXiv:2411.16085, 2024). The mask needs the whole leaf (its mean rescales the kept
coordinates), so the wrapper is a whole-leaf transformation around any inner one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, constant, positive
from gradxform._src.protocol.transformation import Transformation


@pytree_dataclass
class cautious(Transformation):
    """Zeroes the coordinates of `inner`'s update whose sign disagrees with the gradient's.

        u_t = inner(g_t)
        φ_t = 1[u_t ⊙ g_t > 0]                              (per leaf)
        ũ_t = u_t ⊙ φ_t / max(mean(φ_t), ε)

    Dividing by the fraction of kept coordinates keeps the update's scale; ε (the authors'
    1e-3) bounds the factor when almost every coordinate disagrees. This is the normalisation
    of the authors' code (`mask.div_(mask.mean().clamp_(min=1e-3))`, which they took from timm);
    their first version multiplied by d / (Σφ + 1) instead, kept there as a comment.

    `inner` must produce a descent direction with the gradient's orientation (scale_by_adam,
    trace, scale_by_lion...), not an update already multiplied by -η: put the learning rate and
    a decoupled weight decay after the wrapper, as `cadamw` does, so that decay is not masked.

    Args:
      inner: the transformation whose update is masked; its state is this wrapper's state.
      eps: ε > 0, the least mean(φ) divided by (authors' 1e-3).

    Returns:
      A transformation with `inner`'s state.

    References:
      Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
      arXiv:2411.16085, 2024, Algorithm 1; reference code github.com/kyleliang919/C-Optim.
    """

    inner: Transformation = child()
    eps: Any = constant(1e-3, check=positive)

    def init(self, params):
        return self.inner.init(params)

    def update(self, updates, state, params=None, **extra_args):
        out, new_state = self.inner.update(updates, state, params, **extra_args)
        eps = self.eps

        def mask_leaf(u, g):
            if u is None:
                return None
            phi = (jnp.real(u * jnp.conj(g)) > 0).astype(u.dtype)        # φ = 1[u ⊙ g > 0]
            denom = jnp.maximum(jnp.mean(phi), jnp.asarray(eps, jnp.real(phi).dtype))
            return u * (phi / denom.astype(u.dtype))                     # u ⊙ φ / max(mean φ, ε)

        return jax.tree.map(mask_leaf, out, updates, is_leaf=lambda x: x is None), new_state

    def hyperparams(self, state) -> dict:
        return self.inner.hyperparams(state)

    def _substates(self, state):
        return [(type(self.inner).__name__, self.inner, state)]
