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
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

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
from gradxform.adam import _nesterov_mu_hat
from gradxform.alias import adamw
from gradxform.combinators import partition
from gradxform.combine import chain
from gradxform.momentum import bias_correction, ema_step
from gradxform.newton_schulz import (
    DEFAULT_NS_COEFFS,
    _check_coeffs,
    _map_matrices,
    _StaticDims,
    fan_in_fan_out,
    orthogonalize_via_newton_schulz,
)
from gradxform.newton_schulz import (
    MuonDimensionNumbers as MuonDimensionNumbers,  # re-exported: muon's users need it
)
from gradxform.scaling import add_decayed_weights, scale_by_learning_rate

# -- the transformations --------------------------------------------------------------------------


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
        m = jax.tree.map(lambda g, m: ema_step(g, m, h.beta), updates, state.mu)
        t = safe_increment(state.count)
        if self.nesterov and self.debias:
            m_tilde = _nesterov_mu_hat(m, updates, h.beta, t)
        elif self.nesterov:  # β m_t + (1 - β) g_t: one more EMA step with the same gradient
            m_tilde = jax.tree.map(lambda g, m: ema_step(g, m, h.beta), updates, m)
        else:
            m_tilde = bias_correction(m, h.beta, t) if self.debias else m

        def direction(x, dims):
            o = orthogonalize_via_newton_schulz(x, h.ns_coeffs, self.ns_steps, h.eps, dims,
                                                self.ns_dtype)
            if self.adaptive:
                o = jnp.sum(jnp.conj(x) * o).real.astype(o.dtype) * o
            return o

        out = _map_matrices(direction, m_tilde, self.weight_dimension_numbers, "scale_by_muon")
        return _tree.cast_like(out, updates), MuonState(count=t, mu=_tree.cast_like(m, state.mu))


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

