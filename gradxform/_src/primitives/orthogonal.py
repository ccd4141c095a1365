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
from jax.typing import DTypeLike

from gradxform._src.primitives.adam_family import nesterov_mu_hat
from gradxform._src.primitives.moments import bias_correction, ema_step
from gradxform._src.primitives.newton_schulz import (
    DEFAULT_NS_COEFFS,
    StaticDims,
    check_coeffs,
    fan_in_fan_out,
    map_matrices,
    orthogonalize_via_newton_schulz,
)
from gradxform._src.primitives.newton_schulz import MuonDimensionNumbers as MuonDimensionNumbers
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import (
    constant,
    dtype_option,
    hyperparameter,
    in_interval,
    integer_at_least,
    non_negative,
    static,
)
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    EmptyState,
    Transformation,
    safe_increment,
    zero_count,
)

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
    ns_steps: int = static(5, check=integer_at_least(1))
    beta: ScalarOrSchedule = hyperparameter(0.95, check=in_interval(0, 1, "[)"))
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)
    mu_dtype: DTypeLike | None = static(None, check=dtype_option)
    nesterov: bool = static(True)
    debias: bool = static(True)
    adaptive: bool = static(False)
    weight_dimension_numbers: Any = static(None)
    ns_dtype: DTypeLike | None = static(None, check=dtype_option)

    def __post_init__(self):
        object.__setattr__(self, "weight_dimension_numbers",
                           StaticDims(self.weight_dimension_numbers))
        super().__post_init__()

    def _validate(self):
        if not isinstance(self.ns_coeffs, jax.core.Tracer):
            try:
                check_coeffs(self.ns_coeffs)
            except ValueError as e:
                raise ValueError(f"scale_by_muon: {e}") from None

    def init(self, params):
        return MuonState(count=zero_count(), mu=tree_utils.zeros_like(params, self.mu_dtype))

    def update(self, updates, state, params=None, **extra_args):
        hp = self.at(state.count)
        lookup = leaf_scalars(dict(beta=hp.beta))

        def momentum(g, m):  # m_t = β m_{t-1} + (1 - β) g_t, in the wider precision of g and m
            m = tree_utils.in_update_precision(m, g)
            return ema_step(m, tree_utils.widen(g, m), lookup(m).beta)

        m = jax.tree.map(momentum, updates, state.mu)
        t = safe_increment(state.count)
        if self.nesterov and self.debias:
            m_tilde = nesterov_mu_hat(m, updates, hp.beta, t)
        elif self.nesterov:  # β m_t + (1 - β) g_t: one more EMA step with the same gradient
            m_tilde = jax.tree.map(momentum, updates, m)
        else:
            m_tilde = bias_correction(m, hp.beta, t) if self.debias else m

        def direction(x, dims):
            o = orthogonalize_via_newton_schulz(x, hp.ns_coeffs, self.ns_steps, hp.eps, dims,
                                                self.ns_dtype)
            if self.adaptive:
                o = jnp.sum(jnp.conj(x) * o).real.astype(o.dtype) * o
            return o

        out = map_matrices(direction, m_tilde, self.weight_dimension_numbers, "scale_by_muon")
        new_state = MuonState(count=t, mu=tree_utils.cast_like(m, state.mu))
        return tree_utils.cast_like(out, updates), new_state


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
    consistent_rms: float | None = constant(None, check=non_negative)

    def __post_init__(self):
        object.__setattr__(self, "weight_dimension_numbers",
                           StaticDims(self.weight_dimension_numbers))
        super().__post_init__()

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        lookup = leaf_scalars(dict(rho=self.at(None).consistent_rms))

        def rescale(g, dims):
            fan_in, fan_out = fan_in_fan_out(g.shape, dims)
            if self.consistent_rms is None:
                return math.sqrt(max(1.0, fan_out / fan_in)) * g
            return (lookup(g).rho * math.sqrt(max(fan_in, fan_out))) * g

        out = map_matrices(rescale, updates, self.weight_dimension_numbers, "scale_by_shape")
        return out, state


@dataclasses.dataclass(frozen=True)
class MuonLabels:
    """'muon' for the leaves with dimension numbers, 'adam' for the others (hashable by value)."""

    dims: StaticDims

    def __call__(self, params):
        leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=tree_utils.is_none)
        dims = self.dims.per_leaf(params, "muon")
        labels = [None if x is None else ("adam" if d is None else "muon")
                  for x, d in zip(leaves, dims, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, labels)
