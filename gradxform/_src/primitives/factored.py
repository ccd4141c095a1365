"""Adafactor: second moments in factored form, with relative step sizes (Shazeer & Stern 2018).

Adam stores, for an n×m weight matrix, an n×m second moment V. Adafactor stores its row sums R
(n numbers) and column sums C (m numbers) and uses the rank-1 matrix

    V̂ = R Cᵀ / (1ᵀ R)

in its place: the best rank-1 approximation of V in the I-divergence, which keeps V̂'s row and
column sums equal to V's. Optimizer memory for the matrix drops from n·m to n + m. The other
ideas of the paper are separate transformations here: clipping the update's RMS
(`clip_by_block_rms`), and steps proportional to the scale of the parameter
(`scale_by_param_block_rms`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.primitives.adaptive import abs_sq, real_moment_dtype
from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars, map_leaves
from gradxform._src.protocol.fields import constant, hyperparameter, non_negative, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    EmptyState,
    Transformation,
    float_count,
    require_params,
    safe_increment,
    zero_count,
)


def decay_rate_pow(count: jax.Array, exponent: float | jax.Array = 0.8) -> jax.Array:
    """Adafactor's increasing second-moment decay: β̂2_t = 1 - t^(-c), t = count + 1.

    β̂2_1 = 0, so the first step uses g² alone (no bias correction is needed); later the
    average lengthens to roughly the last t/c steps.
    """
    t = float_count(count, exponent) + 1
    return 1.0 - t ** (-exponent)


def _factored_dims(shape, factored: bool, min_dim_size_to_factor: int, convention: str = "optax"):
    """The axes (rows, columns) to factor over, or None: the two largest axes (second largest,
    largest), or the last two with `convention="torch"`, if both are large enough."""
    if not factored or len(shape) < 2:
        return None
    if convention == "torch":
        if min(shape[-2:]) < min_dim_size_to_factor:
            return None
        return len(shape) - 2, len(shape) - 1
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


class FactoredState(NamedTuple):
    count: Any
    v_row: Any  # per leaf: the mean of g² over the largest axis (factored leaves), else [0]
    v_col: Any  # per leaf: the mean of g² over the second largest axis, else [0]
    v: Any  # per leaf: the full second moment (leaves that are not factored), else [0]

    @staticmethod
    def param_axes(field: str, tail: tuple, param_shape: tuple,
                   leaf_shape: tuple) -> tuple[int, ...] | None:
        """The param axes a state leaf keeps, for `gradxform.sharding.state_shardings`: a row
        statistic keeps every axis of its param but the one it averages over, and so does a
        column statistic; the [0] placeholders keep none (they are replicated)."""
        del tail
        if field == "v" and leaf_shape == param_shape:
            return tuple(range(len(param_shape)))
        if field not in ("v_row", "v_col"):
            return None
        # The optax convention averages over the largest axis (rows) or the second largest
        # (columns), the torch one over the last or the second last: the one whose removal
        # gives the leaf's shape.
        for convention in ("optax", "torch"):
            dims = _factored_dims(param_shape, True, 0, convention)
            if dims is None:
                return None
            removed = dims[1] if field == "v_row" else dims[0]
            kept = tuple(i for i in range(len(param_shape)) if i != removed)
            if tuple(param_shape[i] for i in kept) == leaf_shape:
                return kept
        return None


def _placeholder(dtype):
    return jnp.zeros((1,), dtype)


@pytree_dataclass(positional=6)
class scale_by_factored_rms(Transformation):
    """Adafactor's direction: the gradient over the root of a factored second moment.

    For a leaf whose two largest axes (d1 second largest, d0 largest) both have at least
    `min_dim_size_to_factor` entries:

        r_t = β̂_t r_{t-1} + (1 - β̂_t) mean_{d0}(g_t² + ε)      (a row statistic)
        c_t = β̂_t c_{t-1} + (1 - β̂_t) mean_{d1}(g_t² + ε)      (a column statistic)
        u_t = g_t / √(r_t c_tᵀ / mean(r_t))                      (V̂ = R Cᵀ / 1ᵀR with means)

    and for the other leaves (vectors, small matrices) the full second moment:

        v_t = β̂_t v_{t-1} + (1 - β̂_t)(g_t² + ε),     u_t = g_t / √v_t

    with β̂_t = `decay_rate_fn`(t - step_offset, decay_rate), by default 1 - (t + 1)^(-0.8).
    Extra leading axes (stacked layers, conv kernels) are kept in the statistics: the
    factoring is over the two largest axes only, as in optax.

    `convention="torch"` computes torch.optim.Adafactor's direction instead: the last two axes
    are factored (rows d1 = -2, columns d0 = -1), and ε1 is not added to g² but bounds what is
    divided by:

        r_t = β̂_t r_{t-1} + (1 - β̂_t) mean_{d0}(g_t²),   c_t likewise over d1
        V̂_t = r_t c_tᵀ / max(mean(r_t), ε1)      (v_t = β̂_t v_{t-1} + (1 - β̂_t) g_t² unfactored)
        u_t = g_t / √max(V̂_t, ε1²)

    with `epsilon=None` meaning ε1 = the machine epsilon of the leaf's dtype (torch's default);
    pass `min_dim_size_to_factor=0` to factor every matrix, as torch does.

    Args:
      factored: factor the second moment of large matrices (False: Adam-like full moments).
      decay_rate: c, the exponent of the decay schedule (0.8).
      step_offset: the step count at which the decay schedule restarts (fine-tuning).
      min_dim_size_to_factor: factor only when the two largest axes have at least this size.
      epsilon: ε1, added to g² (1e-30); with `convention="torch"` the bound ε1 (None: the
        machine epsilon of each leaf's dtype).
      decay_rate_fn: `fn(step, decay_rate) -> β̂` (default `decay_rate_pow`).
      convention: "optax" (default) or "torch" (see above).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, Algorithms 4 and 5.
    """

    factored: bool = static(True)
    decay_rate: ScalarOrSchedule = hyperparameter(0.8, check=non_negative)
    step_offset: ScalarOrSchedule = hyperparameter(0, check=non_negative)
    min_dim_size_to_factor: int = static(128)
    epsilon: ScalarOrSchedule | None = hyperparameter(1e-30, check=non_negative)
    decay_rate_fn: Callable = static(decay_rate_pow)
    convention: str = static(
        "optax", check=lambda x: None if x in ("optax", "torch") else "'optax' or 'torch'")

    def _validate(self):
        if self.convention == "optax" and self.epsilon is None:
            raise ValueError("scale_by_factored_rms: epsilon=None (the dtype's machine epsilon) "
                             "is torch's bound; pass convention='torch' or a number")

    def _dims(self, x):
        return _factored_dims(jnp.shape(x), self.factored, self.min_dim_size_to_factor,
                              self.convention)

    def init(self, params):
        def row(p):
            dims = self._dims(p)
            dt = real_moment_dtype(p)
            if dims is None:
                return _placeholder(dt)
            return jnp.zeros(tuple(n for i, n in enumerate(p.shape) if i != dims[1]), dt)

        def col(p):
            dims = self._dims(p)
            dt = real_moment_dtype(p)
            if dims is None:
                return _placeholder(dt)
            return jnp.zeros(tuple(n for i, n in enumerate(p.shape) if i != dims[0]), dt)

        def full(p):
            dt = real_moment_dtype(p)
            return jnp.zeros(jnp.shape(p), dt) if self._dims(p) is None else _placeholder(dt)

        return FactoredState(
            count=zero_count(),
            v_row=jax.tree.map(row, params),
            v_col=jax.tree.map(col, params),
            v=jax.tree.map(full, params),
        )

    def update(self, updates, state, params=None, **extra_args):
        hp = self.at(state.count)
        decay = self.decay_rate_fn(state.count - hp.step_offset, hp.decay_rate)
        lookup = leaf_scalars(dict(beta=decay, eps=hp.epsilon))

        def one(g, v_row, v_col, v):
            if self.convention == "torch":
                return self._torch_leaf(lookup, g, v_row, v_col, v)
            dt = v.dtype
            s = lookup(v)
            g_w = tree_utils.widen(g, v)
            g2 = abs_sq(g_w) + s.eps                       # g_t² + ε1
            dims = self._dims(g)
            if dims is None:
                v = ema_step(v, g2, s.beta, decay_first=True)  # β̂ v_{t-1} + (1 - β̂)(g_t² + ε1)
                return (g_w * v ** -0.5).astype(g.dtype), v_row, v_col, v
            d1, d0 = dims
            v_row = ema_step(v_row, jnp.mean(g2, axis=d0), s.beta, decay_first=True)
            v_col = ema_step(v_col, jnp.mean(g2, axis=d1), s.beta, decay_first=True)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_factor = (v_row / jnp.mean(v_row, axis=reduced_d1, keepdims=True)) ** -0.5
            col_factor = v_col ** -0.5
            u = g_w * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
            return u.astype(g.dtype), v_row, v_col, v.astype(dt)

        updates, v_row, v_col, v = map_leaves(one, updates, state.v_row, state.v_col, state.v,
                                              num_outputs=4)
        return updates, FactoredState(
            count=safe_increment(state.count), v_row=v_row, v_col=v_col, v=v
        )

    def _torch_leaf(self, lookup, g, v_row, v_col, v):
        """One leaf of `convention="torch"` (see the docstring)."""
        s = lookup(v)
        eps1 = jnp.finfo(v.dtype).eps if s.eps is None else s.eps
        g_w = tree_utils.widen(g, v)
        g2 = abs_sq(g_w)
        dims = self._dims(g)
        if dims is None:
            v = ema_step(v, g2, s.beta, decay_first=True)      # β̂ v_{t-1} + (1 - β̂) g_t²
            estimate = v
        else:
            v_row = ema_step(v_row, jnp.mean(g2, axis=-1), s.beta, decay_first=True)
            v_col = ema_step(v_col, jnp.mean(g2, axis=-2), s.beta, decay_first=True)
            scale = jnp.maximum(jnp.mean(v_row, axis=-1, keepdims=True), eps1)
            # V̂ = r cᵀ / max(mean(r), ε1)
            estimate = v_row[..., :, None] * v_col[..., None, :] / scale[..., None]
        u = g_w * jax.lax.rsqrt(jnp.maximum(estimate, eps1 * eps1))   # g / √max(V̂, ε1²)
        return u.astype(g.dtype), v_row, v_col, v


@pytree_dataclass
class scale_by_param_block_rms(Transformation):
    """Adafactor's relative step size: scale each leaf's update by the RMS of the parameter.

        u = max(rms(θ), ε2) · g,    rms(θ) = √(mean_i θ_i²)   (per leaf)

    A learning rate then means "change each weight block by this fraction of its size"; ε2
    keeps zero-initialised blocks (biases) moving.

    Args:
      min_scale: ε2 ≥ 0 (1e-3), a number or an array, not a schedule (the transform keeps no
        step count to evaluate one at).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, §8 (relative step size, α_t = max(ε2, RMS(X_{t-1})) ρ_t).
    """

    min_scale: float = constant(1e-3, check=non_negative)

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "scale_by_param_block_rms")
        lookup = leaf_scalars(dict(eps2=self.at(None).min_scale))

        def rescale(g, p):
            wide = p.astype(tree_utils.moment_dtype(p))  # float32 for 16-bit params
            rms = jnp.sqrt(jnp.mean(abs_sq(wide)))
            return (jnp.maximum(rms, lookup(rms).eps2).astype(g.dtype)) * g   # max(rms(θ), ε2) g

        return jax.tree.map(rescale, updates, params), state
