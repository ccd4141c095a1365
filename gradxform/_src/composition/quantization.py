"""8-bit optimizer state: block-wise quantization with a dynamic map (Dettmers et al. 2022).

Adam keeps two float32 moments per parameter, 8 bytes, twice the model in float32. Storing
them in 8 bits cuts that to 2 bytes (plus one float per block), if the quantization keeps the
information that matters. Two ideas make it work:

- A *dynamic* map. Moments span many orders of magnitude; a linear 8-bit grid would round
  everything below 1/127 of the block's maximum to zero. The dynamic tree map spends its 8 bits
  as: sign, then a run of zero bits whose length is a decimal exponent, then an indicator bit,
  then a linear fraction. It covers 1e-7 to 1 of the block's maximum, with fine steps near
  the maximum (6 fraction bits in the top decade) and coarse ones in the lowest decades:
  precision is traded for range. For the second moment, which is never negative, the sign bit
  becomes one more fraction bit (the "unsigned" map).
- *Block-wise* normalization. Each block of B values (B = 2048 in the paper) is divided by its
  own absolute maximum before quantization, so an outlier degrades only its block, and blocks
  are independent (parallel on accelerators).

Between steps the state is stored as 8-bit codes; each update dequantizes it, runs the
optimizer in its usual precision and quantizes the new state. The update itself is computed
from the unquantized new moments, as in the paper.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, integer_at_least, static
from gradxform._src.protocol.transformation import Transformation


def dynamic_map(signed: bool = True) -> np.ndarray:
    """The 256 values of the 8-bit dynamic tree quantization map, sorted, in [-1, 1].

    With e leading zero bits (e = 0..6) after the sign, the remaining 6 - e bits (7 - e when
    unsigned) form a linear fraction f of 2^(6-e) (2^(7-e)) equal steps of [0.1, 1], taken at the
    step midpoints, and the value is ±10^(-e) f. Together with 0 and 1 these are 256 values:

        signed:    {0, 1} ∪ {±10^-e (0.1 + 0.9 (j + ½) / 2^(6-e)) : e = 0..6, j < 2^(6-e)}
        unsigned:  {0, 1} ∪ { 10^-e (0.1 + 0.9 (j + ½) / 2^(7-e)) : e = 0..6, j < 2^(7-e)}

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization",
      ICLR 2022, §2.2 and Appendix F (the map of bitsandbytes' `create_dynamic_map`).
      Dettmers, "8-Bit Approximations for Parallelism in Deep Learning", ICLR 2016.
    """
    values = [0.0, 1.0]
    for e in range(7):
        n = 2 ** (6 - e + (0 if signed else 1))
        fractions = 0.1 + 0.9 * (np.arange(n) + 0.5) / n
        values.extend(10.0**-e * fractions)
        if signed:
            values.extend(-(10.0**-e) * fractions)
    out = np.sort(np.asarray(values, np.float64)).astype(np.float32)
    assert out.shape == (256,)
    return out


SIGNED_MAP = dynamic_map(signed=True)
UNSIGNED_MAP = dynamic_map(signed=False)


def _map(signed: bool, dtype):
    return jnp.asarray(SIGNED_MAP if signed else UNSIGNED_MAP).astype(dtype)


def _blocks(flat, block_size: int):
    """flat padded with zeros to whole blocks, as (num_blocks, block_size)."""
    flat = tree_utils.gathered(flat)  # blocks of consecutive entries cross the shards
    num_blocks = -(-flat.shape[0] // block_size)
    padded = jnp.pad(flat, (0, num_blocks * block_size - flat.shape[0]))
    return padded.reshape(num_blocks, block_size)


@jax.tree_util.register_pytree_with_keys_class
class QuantizedArray:
    """An array stored as one uint8 code per entry and one absolute maximum per block.

        x ≈ absmax[block] · map[codes]

    `codes` has the array's shape; `absmax` has one entry per block of `block_size`
    consecutive entries (row-major), in the array's original dtype. Its leaves are real
    arrays, so `sum(x.nbytes for x in jax.tree.leaves(state))` is the stored size.
    """

    __slots__ = ("codes", "absmax", "signed", "block_size")

    def __init__(self, codes: jax.Array, absmax: jax.Array, signed: bool,
                 block_size: int) -> None:
        self.codes = codes
        self.absmax = absmax
        self.signed = signed
        self.block_size = block_size

    def tree_flatten_with_keys(self):
        keys = jax.tree_util.GetAttrKey
        return ((keys("codes"), self.codes), (keys("absmax"), self.absmax)), (
            self.signed, self.block_size)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    @property
    def shape(self):
        return self.codes.shape

    @property
    def dtype(self):
        return self.absmax.dtype

    def dequantize(self):
        """absmax[block] · map[codes], in the original dtype and shape."""
        return _dequantize(self.codes, self.absmax, self.signed, self.block_size)

    def __repr__(self):
        kind = "signed" if self.signed else "unsigned"
        return f"QuantizedArray({kind}, shape={tuple(self.codes.shape)}, " \
               f"block_size={self.block_size})"


# Jitted so that eager use runs one compiled kernel rather than a dozen small ones.
@functools.partial(jax.jit, static_argnums=(2, 3))
def _dequantize(codes, absmax, signed: bool, block_size: int):
    code = _map(signed, absmax.dtype)
    flat = codes.reshape(-1)
    values = code[_blocks(flat, block_size).astype(jnp.int32)] * absmax[:, None]
    return values.reshape(-1)[: flat.shape[0]].reshape(codes.shape)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize(x, block_size: int, signed: bool):
    blocks = _blocks(x.reshape(-1), block_size)
    absmax = jnp.max(jnp.abs(blocks), axis=1, initial=0.0)
    normed = blocks / jnp.where(absmax > 0, absmax, jnp.ones_like(absmax))[:, None]
    code = _map(signed, normed.dtype)
    # The nearest map value: the number of midpoints between neighbouring values below x.
    midpoints = (code[1:] + code[:-1]) / 2
    idx = jnp.searchsorted(midpoints, normed.reshape(-1))
    return idx[: x.size].astype(jnp.uint8).reshape(x.shape), absmax.astype(x.dtype)


def quantize_blockwise(x: ArrayLike, *, block_size: int = 2048,
                       signed: bool = True) -> QuantizedArray:
    """x as 8-bit codes of the dynamic map, normalized by the absolute maximum of each block.

        a_b = max_{i ∈ b} |x_i|,     code_i = argmin_j |map_j - x_i / a_b|

    Args:
      x: a floating-point array (for `signed=False`, non-negative).
      block_size: B, entries per block (2048 in the paper; 256 is finer and costs 4 bytes per
        256 entries).
      signed: use the signed map (first moments) or the unsigned one (second moments).

    Returns:
      A `QuantizedArray`.

    References:
      Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022, §2.1.
    """
    codes, absmax = _quantize(jnp.asarray(x), block_size, signed)
    return QuantizedArray(codes, absmax, signed, block_size)


class QuantizedState(NamedTuple):
    """The inner transformation's state with its moment buffers as `QuantizedArray`s."""

    inner_state: Any


def _field_names(path):
    return [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)]


@pytree_dataclass
class quantize_state(Transformation):
    """Stores the moment buffers of `inner`'s state in 8 bits between steps.

        state_t = Q(inner.update(g_t, Q⁻¹(state_{t-1})))        Q: `quantize_blockwise`

    `quantize_state(adamw(1e-3))` is 8-bit AdamW: m with the signed map, v with the unsigned
    one, 2 bytes per parameter instead of 8 (75% less optimizer memory, a little less with
    the per-block maxima). Only the buffers of the state fields named in `signed_fields` and
    `unsigned_fields` with at least `min_size` entries are quantized; step counts, small
    tensors and everything else (e.g. schedule-free's z, which is a copy of the params) keep
    their precision. The defaults cover the moments of the Adam family, Lion, RMSProp,
    AdaGrad and momentum (`trace`, `ema`).

    Args:
      inner: the optimizer whose state is stored in 8 bits.
      block_size: B, entries per block (2048 as in the paper, or 256).
      min_size: leaves with fewer entries keep full precision (4096, as bitsandbytes: small
        tensors such as biases and norms cost little and are sensitive).
      signed_fields: state field names of buffers that may be negative.
      unsigned_fields: state field names of non-negative buffers (second moments).

    References:
      Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise Quantization",
      ICLR 2022.
    """

    inner: Transformation = child()
    block_size: int = static(2048, check=integer_at_least(1))
    min_size: int = static(4096, check=integer_at_least(0))
    signed_fields: tuple = static(("mu", "trace", "ema"))
    unsigned_fields: tuple = static(("nu", "nu_max", "sum_of_squares"))

    def __post_init__(self):
        object.__setattr__(self, "signed_fields", tuple(self.signed_fields))
        object.__setattr__(self, "unsigned_fields", tuple(self.unsigned_fields))
        super().__post_init__()

    def _compress(self, state):
        def one(path, x):
            if not (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
                    and x.size >= max(self.min_size, 1)):
                return x
            for name in reversed(_field_names(path)):
                if name in self.signed_fields:
                    return quantize_blockwise(x, block_size=self.block_size, signed=True)
                if name in self.unsigned_fields:
                    return quantize_blockwise(x, block_size=self.block_size, signed=False)
            return x

        return jax.tree_util.tree_map_with_path(one, state)

    def _expand(self, state):
        return jax.tree.map(
            lambda x: x.dequantize() if isinstance(x, QuantizedArray) else x, state,
            is_leaf=lambda x: isinstance(x, QuantizedArray),
        )

    def init(self, params):
        return QuantizedState(inner_state=self._compress(self.inner.init(params)))

    def update(self, updates, state, params=None, **extra_args):
        updates, inner = self.inner.update(
            updates, self._expand(state.inner_state), params, **extra_args)
        return updates, QuantizedState(inner_state=self._compress(inner))

    def hyperparams(self, state) -> dict:
        return self.inner.hyperparams(self._expand(state.inner_state))

    def _substates(self, state):
        return [(type(self.inner).__name__, self.inner, self._expand(state.inner_state))]
