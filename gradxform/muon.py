"""Muon: momentum orthogonalized by Newton–Schulz (Jordan et al. 2024).

A weight matrix W acts on inputs as x ↦ x W. Muon keeps a momentum M of its gradients and steps
along the semi-orthogonal matrix nearest to M, its polar factor: with M = U S Vᵀ,

    O = U Vᵀ   (every singular value of M set to 1)

This is steepest descent under the spectral norm. Directions that the gradient barely touches
(small singular values) move as much as the dominant ones, so the update does not collapse onto
a few directions as the raw momentum of a hidden layer tends to. The SVD is too slow for every
step; a few iterations of an odd matrix polynomial push the singular values towards 1 instead
(`orthogonalize_via_newton_schulz`).

Muon is for the 2-D weights of hidden layers. Biases, norms, embeddings and the output head are
trained with AdamW; `muon` does that routing with `partition`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _tree
from gradxform._base import (
    EmptyState,
    Transformation,
    hyperparameter,
    in_interval,
    non_negative,
    pytree_dataclass,
    safe_increment,
    static,
    zero_count,
)
from gradxform._mask import prefix_values
from gradxform.adam import _nesterov_mu_hat
from gradxform.alias import adamw
from gradxform.combinators import partition
from gradxform.combine import chain
from gradxform.momentum import bias_correction
from gradxform.scaling import add_decayed_weights, scale_by_learning_rate

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
    acc = _tree.moment_dtype(x)  # 16-bit storage, float32 accumulation

    def matmul(p, q):
        return jnp.matmul(p.astype(acc), q.astype(acc))

    norm = jnp.sqrt(jnp.sum(jnp.square(jnp.abs(x.astype(acc))), axis=(-2, -1), keepdims=True))
    norm = norm.astype(dtype).astype(acc)
    x = (x.astype(acc) / (norm + _tree.coef(eps, norm))).astype(dtype)
    for a, b, c in _coefficient_rows(ns_coeffs, ns_steps, acc):
        gram = matmul(x, jnp.conj(jnp.swapaxes(x, -1, -2))).astype(dtype)
        poly = (b * gram.astype(acc) + c * matmul(gram, gram)).astype(dtype)
        x = (a * x.astype(acc) + matmul(poly, x)).astype(dtype)
    return x


# Jitted so that eager use runs one compiled kernel rather than dozens of small ones.
@functools.partial(jax.jit, static_argnames=("ns_steps", "dimension_numbers", "ns_dtype"))
def orthogonalize_via_newton_schulz(x, ns_coeffs=DEFAULT_NS_COEFFS, ns_steps: int = 5,
                                    eps=1e-8, dimension_numbers: MuonDimensionNumbers | None = None,
                                    ns_dtype=None):
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


class _StaticDims:
    """`weight_dimension_numbers` held as static data: None, one spec, a tree of specs, a callable.

    A tree may be a prefix of the params and holds a MuonDimensionNumbers for each matrix and
    None for leaves that are not Muon's (those are routed to AdamW by `muon`).
    """

    __slots__ = ("value", "_key")

    def __init__(self, value):
        if isinstance(value, _StaticDims):
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
        if not isinstance(other, _StaticDims):
            try:
                other = _StaticDims(other)
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
        leaves = jax.tree_util.tree_leaves(tree, is_leaf=_tree._is_none)
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
            f"{where}: leaf '{_tree.path_str(path)}' of shape {jnp.shape(leaf)} is not a matrix "
            f"for Muon. Route vectors, scalars and other non-matrix params to another optimizer "
            f"(`muon` sends them to AdamW), or say how to read the leaf as matrices with "
            f"weight_dimension_numbers, e.g. MuonDimensionNumbers(reduction_axis=1, output_axis=2) "
            f"for stacked layers (L, in, out) or MuonDimensionNumbers(reduction_axis=(0, 1, 2), "
            f"output_axis=3) for a conv kernel (kh, kw, in, out)"
        )
    return dims


def _map_matrices(fn, tree, spec: _StaticDims, where: str):
    """fn(leaf, dims) for every non-None leaf of `tree`, with its dimension numbers."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_tree._is_none)
    dims = spec.per_leaf(tree, where)
    out = [
        None if leaf is None else fn(leaf, _dims_or_raise(d, leaf, path, where))
        for (path, leaf), d in zip(paths_leaves, dims, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_coeffs(value):
    shape = np.shape(value)
    if not (shape == (3,) or (len(shape) == 2 and shape[1] == 3 and shape[0] >= 1)):
        raise ValueError(
            f"ns_coeffs must be (a, b, c) or one (a, b, c) row per step (shape (n, 3)), got "
            f"shape {shape}"
        )


# -- the transformations --------------------------------------------------------------------------


def _ema(g, m, beta):
    """(1 - β) g + β m, in the precision of m."""
    return (1 - _tree.coef(beta, m)) * _tree.widen(g, m) + _tree.coef(beta, m) * m


class MuonState(NamedTuple):
    count: Any
    mu: Any


@pytree_dataclass
class scale_by_muon(Transformation):
    """Muon's direction: the momentum of each weight matrix, orthogonalized.

        m_t = β m_{t-1} + (1 - β) g_t
        m̃_t = β m̂_t^{(t+1)} + (1 - β) ĝ_t       (nesterov)      m̃_t = m̂_t      (otherwise)
        u_t = NS_k(m̃_t) ≈ U Vᵀ  where m̃_t = U S Vᵀ

    with the bias corrections m̂^{(t+1)} = m_t / (1 - β^{t+1}), ĝ_t = g_t / (1 - β^t), m̂_t =
    m_t / (1 - β^t), as optax's `contrib.scale_by_muon`. `debias=False` drops them:
    m̃_t = β m_t + (1 - β) g_t, the form of Jordan's reference and torch.optim.Muon. Torch
    writes its momentum as B_t = μ B_{t-1} + g_t (its docstring) but computes the EMA; the
    two differ by the factor (1 - μ), which the normalization in NS removes.

    NS_k is `orthogonalize_via_newton_schulz` with k = `ns_steps` (see there for why the
    result's singular values are near but not at 1). Pair it with `scale_by_shape` for the
    shape-dependent step size.

    Args:
      ns_coeffs: (a, b, c) of the quintic (Jordan's (3.4445, -4.7750, 2.0315)), or one row per
        step.
      ns_steps: the number of Newton–Schulz steps (5).
      beta: β in [0, 1), the momentum (0.95).
      eps: ε in NS's normalization G / (‖G‖_F + ε). torch.optim.Muon divides by
        max(‖G‖_F, ε) with ε = 1e-7 instead: the same except for an all-zero G.
      mu_dtype: dtype of m (default: the params' dtype, float32 for 16-bit params).
      nesterov: use the Nesterov form (default, as optax, torch and the reference).
      debias: bias-correct as optax does (True) or not, as torch and the reference (False).
      adaptive: scale u_t by ⟨m̃_t, u_t⟩, the dual norm of m̃ (Bernstein & Newhouse 2024).
      weight_dimension_numbers: how each leaf is read as matrices: None (every leaf is a 2-D
        (in, out) matrix), one `MuonDimensionNumbers` for all leaves, a tree of them (a prefix
        of the params), or a function of the params returning one.
      ns_dtype: the dtype the iteration runs in (default: m's dtype); `jnp.bfloat16` as torch.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
      Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv:2502.16982.
    """

    ns_coeffs: Any = hyperparameter(DEFAULT_NS_COEFFS)
    ns_steps: int = static(5, check=lambda n: None if isinstance(n, int) and n >= 1 else
                           "an integer >= 1")
    beta: float = hyperparameter(0.95, check=in_interval(0, 1, "[)"))
    eps: float = hyperparameter(1e-8, check=non_negative)
    mu_dtype: Any = static(None)
    nesterov: bool = static(True)
    debias: bool = static(True)
    adaptive: bool = static(False)
    weight_dimension_numbers: Any = static(None)
    ns_dtype: Any = static(None)

    def __post_init__(self):
        object.__setattr__(self, "weight_dimension_numbers",
                           _StaticDims(self.weight_dimension_numbers))
        super().__post_init__()

    def _validate(self):
        if not isinstance(self.ns_coeffs, jax.core.Tracer):
            try:
                _check_coeffs(self.ns_coeffs)
            except ValueError as e:
                raise ValueError(f"scale_by_muon: {e}") from None

    def init(self, params):
        return MuonState(count=zero_count(), mu=_tree.zeros_like(params, self.mu_dtype))

    def update(self, updates, state, params=None, **extra_args):
        h = self.at(state.count)
        m = jax.tree.map(lambda g, m: _ema(g, m, h.beta), updates, state.mu)
        t = safe_increment(state.count)
        if self.nesterov and self.debias:
            m_tilde = _nesterov_mu_hat(m, updates, h.beta, t)
        elif self.nesterov:  # β m_t + (1 - β) g_t: one more EMA step with the same gradient
            m_tilde = jax.tree.map(lambda g, m: _ema(g, m, h.beta), updates, m)
        else:
            m_tilde = bias_correction(m, h.beta, t) if self.debias else m

        def direction(x, dims):
            o = orthogonalize_via_newton_schulz(x, h.ns_coeffs, self.ns_steps, h.eps, dims,
                                                self.ns_dtype)
            if self.adaptive:
                o = jnp.sum(jnp.conj(x) * o).real.astype(o.dtype) * o
            return o

        out = _map_matrices(direction, m_tilde, self.weight_dimension_numbers, "scale_by_muon")
        return _tree.cast_like(out, updates), MuonState(count=t, mu=m)


@pytree_dataclass
class scale_by_shape(Transformation):
    """Muon's shape-dependent step size, so that one learning rate suits every matrix.

        u = √max(1, fan_out / fan_in) · g                      (consistent_rms=None: Jordan)
        u = ρ · √max(fan_in, fan_out) · g                      (consistent_rms=ρ: Liu et al.)

    An orthogonal fan_in × fan_out matrix has RMS entry 1/√max(fan_in, fan_out); the second
    form gives every matrix update the RMS ρ (0.2 matches AdamW's typical update RMS, so
    AdamW's learning rate and weight decay carry over). torch.optim.Muon calls these
    `adjust_lr_fn="original"` and `"match_rms_adamw"`, with torch's (out, in) weight layout.

    Args:
      weight_dimension_numbers: as in `scale_by_muon`.
      consistent_rms: ρ (a number: the transform keeps no step count to evaluate a schedule
        at), or None for Jordan's scaling.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
      Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv:2502.16982.
    """

    weight_dimension_numbers: Any = static(None)
    consistent_rms: float | None = hyperparameter(None, check=non_negative)

    def __post_init__(self):
        object.__setattr__(self, "weight_dimension_numbers",
                           _StaticDims(self.weight_dimension_numbers))
        super().__post_init__()

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        rho = self.consistent_rms

        def rescale(g, dims):
            fan_in, fan_out = fan_in_fan_out(g.shape, dims)
            if rho is None:
                return math.sqrt(max(1.0, fan_out / fan_in)) * g
            return (_tree.coef(rho, g) * math.sqrt(max(fan_in, fan_out))) * g

        out = _map_matrices(rescale, updates, self.weight_dimension_numbers, "scale_by_shape")
        return out, state


@dataclasses.dataclass(frozen=True)
class _MuonLabels:
    """'muon' for the leaves with dimension numbers, 'adam' for the others (hashable by value)."""

    dims: _StaticDims

    def __call__(self, params):
        leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_tree._is_none)
        dims = self.dims.per_leaf(params, "muon")
        labels = [None if x is None else ("adam" if d is None else "muon")
                  for x, d in zip(leaves, dims, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, labels)


def muon(learning_rate, *, ns_coeffs=DEFAULT_NS_COEFFS, ns_steps: int = 5, beta=0.95, eps=1e-8,
         weight_decay=0.0, weight_decay_mask=None, mu_dtype=None, nesterov: bool = True,
         adaptive: bool = False, adam_b1=0.9, adam_b2=0.999, adam_eps_root=0.0,
         adam_weight_decay=0.0, adam_learning_rate=None,
         muon_weight_dimension_numbers: Any = None, consistent_rms=None,
         debias: bool = True, ns_dtype=None) -> partition:
    """Muon for the matrices, AdamW for everything else (optax's `contrib.muon`).

        partition({
            "muon": chain(scale_by_muon(...), scale_by_shape(...),
                          add_decayed_weights(weight_decay, weight_decay_mask),
                          scale_by_learning_rate(learning_rate)),
            "adam": adamw(adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=eps, ...),
        }, labels)

    θ ← θ - η (s · NS(m̃) + λ θ) for a matrix, s from `scale_by_shape`. By default the 2-D
    leaves are Muon's and the rest go to AdamW (with Nesterov momentum when `nesterov`, as in
    optax). `muon_weight_dimension_numbers` chooses otherwise: a tree (prefix of the params) of
    `MuonDimensionNumbers` for Muon's leaves and None for AdamW's — this is how embeddings and
    the output head, which are 2-D but not hidden layers, are sent to AdamW, and how stacked
    layers and conv kernels become Muon's (see `MuonDimensionNumbers`).

    torch.optim.Muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
    adjust_lr_fn) on (out, in) weights is `muon(lr, weight_decay=..., beta=momentum,
    nesterov=..., ns_coeffs=..., eps=..., ns_steps=..., debias=False, ns_dtype=jnp.bfloat16,
    muon_weight_dimension_numbers=MuonDimensionNumbers(reduction_axis=1, output_axis=0),
    consistent_rms=None or 0.2)`.

    Args:
      learning_rate: η for Muon's matrices (and AdamW's, unless `adam_learning_rate`).
      ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov, adaptive, debias, ns_dtype: as in
        `scale_by_muon` (eps is also AdamW's ε).
      weight_decay, weight_decay_mask: decoupled weight decay λ of the matrices, multiplied by
        η as in torch and optax.
      adam_b1, adam_b2, adam_eps_root, adam_weight_decay, adam_learning_rate: AdamW's.
      muon_weight_dimension_numbers: which leaves are Muon's and how they are matrices.
      consistent_rms: as in `scale_by_shape`.

    Returns:
      A `partition` with groups "muon" and "adam".

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
      Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv:2502.16982.
    """
    dims = _StaticDims(muon_weight_dimension_numbers)
    return partition(
        {
            "muon": chain(
                scale_by_muon(ns_coeffs=ns_coeffs, ns_steps=ns_steps, beta=beta, eps=eps,
                              mu_dtype=mu_dtype, nesterov=nesterov, debias=debias,
                              adaptive=adaptive, weight_dimension_numbers=dims,
                              ns_dtype=ns_dtype),
                scale_by_shape(weight_dimension_numbers=dims, consistent_rms=consistent_rms),
                add_decayed_weights(weight_decay, mask=weight_decay_mask),
                scale_by_learning_rate(learning_rate),
            ),
            "adam": adamw(
                learning_rate if adam_learning_rate is None else adam_learning_rate,
                b1=adam_b1, b2=adam_b2, eps=eps, eps_root=adam_eps_root,
                weight_decay=adam_weight_decay, mu_dtype=mu_dtype, nesterov=nesterov,
            ),
        },
        _MuonLabels(dims),
    )

