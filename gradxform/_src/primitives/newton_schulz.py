"""Newton–Schulz orthogonalization, and how Muon reads a weight as a stack of matrices.

`orthogonalize_via_newton_schulz` maps a matrix G = U S Vᵀ to approximately U Vᵀ with five
iterations of an odd matrix polynomial, matmuls only (no SVD). `MuonDimensionNumbers` says which
axes of a weight are the matrix's rows (inputs) and columns (outputs), so that stacked layers and
convolution kernels are orthogonalized as the matrices they act as. Used by `gradxform.muon`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.elementwise import cast_scalars
from gradxform._src.protocol.masks import prefix_values
from gradxform._src.protocol.transformation import Updates

DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
"""(a, b, c) of the quintic p(σ) = aσ + bσ³ + cσ⁵ from Jordan's reference implementation."""


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight form the rows (inputs) and the columns (outputs) of its matrix.

    Muon orthogonalizes the matrix of shape (prod of reduction axes, prod of output axes); every
    other axis is a batch axis, and each slice along the batch axes is orthogonalized on its
    own. For a weight used as `x @ W` (flax's Dense, shape (in, out)) the default (0, 1) is
    right. Other layouts:

        stacked layers, (L, in, out):          MuonDimensionNumbers(reduction_axis=1, output_axis=2)
        conv kernel, flax HWIO (kh, kw, i, o): MuonDimensionNumbers(reduction_axis=(0, 1, 2),
                                                                    output_axis=3)
        conv kernel, torch OIHW (o, i, kh, kw): MuonDimensionNumbers(reduction_axis=(1, 2, 3),
                                                                     output_axis=0)
        torch Linear weight, (out, in):        MuonDimensionNumbers(reduction_axis=1, output_axis=0)

    (The conv forms flatten the receptive field into the input dimension, as the reference
    implementation does with `g.view(len(g), -1)`.) An empty tuple is an axis of size 1: a
    vector with `reduction_axis=()` is a 1×n matrix, and Muon normalizes it.
    """

    reduction_axis: int | tuple[int, ...] = 0
    output_axis: int | tuple[int, ...] = 1


def _axes(spec, ndim: int, what: str, shape) -> tuple[int, ...]:
    axes = (spec,) if isinstance(spec, int) else tuple(spec)
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(
                f"MuonDimensionNumbers: {what} {ax} is out of range for a weight of shape {shape}"
            )
    return tuple(ax % ndim for ax in axes)


def _matrix_layout(shape, dims: MuonDimensionNumbers):
    """(batch, reduction, output) axes of a weight of `shape` under `dims`."""
    ndim = len(shape)
    red = _axes(dims.reduction_axis, ndim, "reduction_axis", shape)
    out = _axes(dims.output_axis, ndim, "output_axis", shape)
    if set(red) & set(out) or len(set(red)) != len(red) or len(set(out)) != len(out):
        raise ValueError(
            f"MuonDimensionNumbers: reduction axes {red} and output axes {out} of a weight of "
            f"shape {shape} must be distinct"
        )
    batch = tuple(ax for ax in range(ndim) if ax not in red + out)
    return batch, red, out


def fan_in_fan_out(shape, dims: MuonDimensionNumbers) -> tuple[int, int]:
    """(fan_in, fan_out): the number of rows and columns of the matrix Muon sees."""
    _, red, out = _matrix_layout(shape, dims)
    return math.prod(shape[ax] for ax in red), math.prod(shape[ax] for ax in out)


def _to_matrices(x, dims: MuonDimensionNumbers):
    """x as a stack of matrices (batch, fan_in, fan_out), and the map back to x's layout."""
    batch, red, out = _matrix_layout(x.shape, dims)
    perm = batch + red + out
    permuted_shape = tuple(x.shape[ax] for ax in perm)
    fan_in, fan_out = fan_in_fan_out(x.shape, dims)
    num = math.prod(x.shape[ax] for ax in batch)
    stacked = jnp.transpose(x, perm).reshape((num, fan_in, fan_out))

    def back(y):
        return jnp.transpose(y.reshape(permuted_shape), np.argsort(perm))

    return stacked, back


def _coefficient_rows(ns_coeffs, ns_steps: int, dtype):
    """One (a, b, c) per iteration: `ns_coeffs` repeated `ns_steps` times, or its rows."""
    c = jnp.asarray(ns_coeffs).astype(dtype)
    if c.ndim == 1:
        return [(c[0], c[1], c[2])] * ns_steps
    return [(row[0], row[1], row[2]) for row in c]


def _newton_schulz(x, ns_coeffs, ns_steps, eps):
    """The quintic Newton–Schulz iteration on a stack of wide matrices (..., m, n), m ≤ n.

        X_0 = G / (‖G‖_F + ε)
        X_{k+1} = a X_k + (b A_k + c A_k²) X_k,     A_k = X_k X_kᵀ

    On the SVD X = U S Vᵀ one step maps each singular value σ to p(σ) = aσ + bσ³ + cσ⁵ and keeps
    U and V, so the iteration is the scalar map p applied to the spectrum. Dividing by the
    Frobenius norm puts every σ in [0, 1]; Jordan's coefficients make p steep at 0 (a = 3.4445)
    so that five steps bring every σ that is not tiny into roughly [0.7, 1.2] — not exactly 1,
    which in practice trains as well as the exact polar factor U Vᵀ and costs five matmul pairs.
    A is m×m with m the smaller side, so the cost is O(m² n). In a 16-bit dtype the matrices are
    stored in it and every matmul and sum accumulates in float32 and rounds once, as
    torch's `addmm` and accelerator matmuls do.
    """
    dtype = x.dtype
    acc = tree_utils.moment_dtype(x)  # 16-bit storage, float32 accumulation

    def matmul(p, q):
        return jnp.matmul(p.astype(acc), q.astype(acc))

    norm = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(x.astype(acc))), axis=(-2, -1), keepdims=True))
    norm = norm.astype(dtype).astype(acc)
    eps = cast_scalars(dict(eps=eps), norm.dtype).eps
    x = (x.astype(acc) / (norm + eps)).astype(dtype)
    for a, b, c in _coefficient_rows(ns_coeffs, ns_steps, acc):
        gram = matmul(x, jnp.conj(jnp.swapaxes(x, -1, -2))).astype(dtype)
        poly = (b * gram.astype(acc) + c * matmul(gram, gram)).astype(dtype)
        x = (a * x.astype(acc) + matmul(poly, x)).astype(dtype)
    return x


# Jitted so that eager use runs one compiled kernel rather than dozens of small ones.
@functools.partial(jax.jit, static_argnames=("ns_steps", "dimension_numbers", "ns_dtype"))
def orthogonalize_via_newton_schulz(x: jax.Array, ns_coeffs: ArrayLike | tuple = DEFAULT_NS_COEFFS,
                                    ns_steps: int = 5, eps: ArrayLike = 1e-8,
                                    dimension_numbers: MuonDimensionNumbers | None = None,
                                    ns_dtype: DTypeLike | None = None) -> jax.Array:
    """An approximately semi-orthogonal matrix with the singular vectors of `x`.

        G = U S Vᵀ   ↦   ≈ U Vᵀ   (singular values pushed towards 1 by `_newton_schulz`)

    Args:
      x: a matrix, or any array with `dimension_numbers` saying which axes are its rows and
        columns (the other axes are batch axes: each slice is orthogonalized on its own).
      ns_coeffs: (a, b, c), used at every step, or one (a, b, c) row per step.
      ns_steps: the number of steps when `ns_coeffs` is a single row.
      eps: ε in the first normalization G / (‖G‖_F + ε).
      dimension_numbers: rows and columns of the matrix (default (0, 1) for a 2-D `x`).
      ns_dtype: the dtype the iteration runs in (default: x's dtype). `jnp.bfloat16` is what
        Jordan's reference and torch.optim.Muon do: the iteration is robust to its rounding
        and bf16 matmuls are fast on accelerators.

    Returns:
      An array of x's shape and dtype.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
      https://kellerjordan.github.io/posts/muon/.
      Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", 2024, arXiv:2409.20325.
    """
    if dimension_numbers is None:
        if x.ndim != 2:
            raise ValueError(
                f"orthogonalize_via_newton_schulz: x has shape {x.shape}; give "
                f"dimension_numbers to say which axes are the matrix's rows and columns"
            )
        dimension_numbers = MuonDimensionNumbers()
    stacked, back = _to_matrices(x, dimension_numbers)
    work = stacked.astype(x.dtype if ns_dtype is None else ns_dtype)
    tall = work.shape[-2] > work.shape[-1]
    if tall:  # iterate on the wide orientation: the Gram matrix is then the smaller one
        work = jnp.swapaxes(work, -1, -2)
    work = _newton_schulz(work, ns_coeffs, ns_steps, eps)
    if tall:
        work = jnp.swapaxes(work, -1, -2)
    return back(work.astype(x.dtype))


# -- which leaves are matrices, and how -----------------------------------------------------------


class _Opaque:
    """Hides a value from pytree flattening (a MuonDimensionNumbers is itself a tuple)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _is_spec(x) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def _normalized(d: MuonDimensionNumbers) -> MuonDimensionNumbers:
    """Lists become tuples so that the spec is hashable (it keys the jit cache)."""
    fix = lambda a: a if isinstance(a, int) else tuple(int(i) for i in a)  # noqa: E731
    return MuonDimensionNumbers(fix(d.reduction_axis), fix(d.output_axis))


class StaticDims:
    """`weight_dimension_numbers` held as static data: None, one spec, a tree of specs, a callable.

    A tree may be a prefix of the params and holds a MuonDimensionNumbers for each matrix and
    None for leaves that are not Muon's (those are routed to AdamW by `muon`).
    """

    __slots__ = ("value", "_key")

    def __init__(self, value):
        if isinstance(value, StaticDims):
            value = value.value
        if isinstance(value, MuonDimensionNumbers):
            value = _normalized(value)
            key = ("one", value)
        elif value is None or callable(value):
            key = ("fn", value)
        else:
            value = jax.tree.map(lambda d: d if d is None else _normalized(d), value,
                                 is_leaf=_is_spec)
            leaves, treedef = jax.tree_util.tree_flatten(value, is_leaf=_is_spec)
            for leaf in leaves:
                if not _is_spec(leaf):
                    raise TypeError(
                        f"weight_dimension_numbers: leaves must be MuonDimensionNumbers or None, "
                        f"got {leaf!r}"
                    )
            key = ("tree", treedef, tuple(leaves))
        self.value = value
        self._key = key

    def __eq__(self, other):
        if not isinstance(other, StaticDims):
            try:
                other = StaticDims(other)
            except (TypeError, ValueError):
                return False
        return self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return getattr(self.value, "__name__", None) or repr(self.value)

    def per_leaf(self, tree, where: str) -> list:
        """One MuonDimensionNumbers (or None: not a Muon matrix) per leaf of `tree`.

        None leaves of `tree` get None. With no spec, 2-D leaves are (in, out) matrices and the
        others are not Muon's.
        """
        leaves = jax.tree_util.tree_leaves(tree, is_leaf=tree_utils.is_none)
        value = self.value(tree) if callable(self.value) else self.value
        if value is None:
            return [None if x is None or jnp.ndim(x) != 2 else MuonDimensionNumbers()
                    for x in leaves]
        if isinstance(value, MuonDimensionNumbers):
            return [None if x is None else value for x in leaves]
        wrapped = jax.tree.map(_Opaque, value, is_leaf=_is_spec)
        got = prefix_values(wrapped, tree, where, "weight_dimension_numbers")
        return [None if g is None else g.value for g in got]


def _dims_or_raise(dims, leaf, path, where: str) -> MuonDimensionNumbers:
    if dims is None:
        raise ValueError(
            f"{where}: leaf '{tree_utils.path_str(path)}' of shape {jnp.shape(leaf)} is not a "
            f"matrix "
            f"for Muon. Route vectors, scalars and other non-matrix params to another optimizer "
            f"(`muon` sends them to AdamW), or say how to read the leaf as matrices with "
            f"weight_dimension_numbers, e.g. MuonDimensionNumbers(reduction_axis=1, output_axis=2) "
            f"for stacked layers (L, in, out) or MuonDimensionNumbers(reduction_axis=(0, 1, 2), "
            f"output_axis=3) for a conv kernel (kh, kw, in, out)"
        )
    return dims


def map_matrices(fn: Callable[[jax.Array, MuonDimensionNumbers], jax.Array], tree: Updates,
                 spec: StaticDims, where: str) -> Updates:
    """fn(leaf, dims) for every non-None leaf of `tree`, with its dimension numbers."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=tree_utils.is_none)
    dims = spec.per_leaf(tree, where)
    out = [
        None if leaf is None else fn(leaf, _dims_or_raise(d, leaf, path, where))
        for (path, leaf), d in zip(paths_leaves, dims, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def check_coeffs(value: ArrayLike) -> None:
    shape = np.shape(value)
    if not (shape == (3,) or (len(shape) == 2 and shape[1] == 3 and shape[0] >= 1)):
        raise ValueError(
            f"ns_coeffs must be (a, b, c) or one (a, b, c) row per step (shape (n, 3)), got "
            f"shape {shape}"
        )
