"""Running a real-valued optimizer on complex parameters, one real number per part."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child
from gradxform._src.protocol.transformation import Transformation


class SplitRealAndImaginaryArrays(NamedTuple):
    """A complex leaf as its two real parts (a pytree node: the inner optimizer sees two
    leaves)."""

    real: Any
    imaginary: Any


class SplitRealAndImaginaryState(NamedTuple):
    inner_state: Any


def complex_to_real_pair(x):
    """x as SplitRealAndImaginaryArrays(Re x, Im x) if complex, else x itself."""
    if x is not None and jnp.iscomplexobj(x):
        return SplitRealAndImaginaryArrays(x.real, x.imag)
    return x


def real_pair_to_complex(x):
    """The inverse of `complex_to_real_pair`: Re + i Im."""
    if isinstance(x, SplitRealAndImaginaryArrays):
        return x.real + x.imaginary * 1j
    return x


def _is_pair(x) -> bool:
    return isinstance(x, SplitRealAndImaginaryArrays)


@pytree_dataclass
class split_real_and_imaginary(Transformation):
    """Applies `inner` to the real and imaginary parts of complex leaves as separate reals.

        z = a + i b  ↦  inner sees (a, b) with gradients (Re g, Im g);  u = u_a + i u_b

    An optimizer that is not elementwise in a complex-aware way (Adam's v_t = E|g|² mixes the
    two parts into one second moment) then treats each part as a real parameter of its own, as
    if the model had been written with real pairs. Real leaves pass to `inner` unchanged. Same
    numbers as optax's `contrib.split_real_and_imaginary`; its state is
    `SplitRealAndImaginaryState(inner_state)`.

    Args:
      inner: the transformation to run on the split tree.
    """

    inner: Transformation = child()

    def init(self, params):
        return SplitRealAndImaginaryState(self.inner.init(jax.tree.map(complex_to_real_pair,
                                                                       params)))

    def update(self, updates, state, params=None, **extra_args):
        split_updates = jax.tree.map(complex_to_real_pair, updates)
        split_params = None if params is None else jax.tree.map(complex_to_real_pair, params)
        out, inner_state = self.inner.update(split_updates, state.inner_state, split_params,
                                             **extra_args)
        out = jax.tree.map(real_pair_to_complex, out, is_leaf=_is_pair)
        return out, SplitRealAndImaginaryState(inner_state)

    def hyperparams(self, state) -> dict:
        if not hasattr(self.inner, "hyperparams"):
            return {}
        return {"inner": self.inner.hyperparams(state.inner_state)}

    def _substates(self, state):
        return [("inner", self.inner, state.inner_state)]
