"""Clipping and gradient hygiene: bounding updates before an optimizer sees them.

Clipping the gradient before an adaptive method bounds what that method remembers: after
`clip_by_global_norm(c)` every g_t has ‖g_t‖ ≤ c, so Adam's second moment
v_t = (1 - β2) Σ β2^(t-s) g_s² has Σ_i v_t,i ≤ c² (1 - β2^t) < c².
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gradxform._src.primitives.adaptive import abs_sq
from gradxform._src.primitives.scaling import CountState
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import (
    ElementwiseTransformation,
    cast_scalars,
    leaf_scalars,
)
from gradxform._src.protocol.fields import (
    concrete_values,
    hyperparameter,
    non_negative,
    positive,
    static,
)
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    Transformation,
    Updates,
    require_params,
    safe_increment,
    zero_count,
)


def norm_dtype(tree: Updates) -> jnp.dtype:
    """The real dtype a norm of `tree` is accumulated in: float32 for 16-bit leaves, else widest."""
    dtypes = [tree_utils.moment_dtype(x) for x in jax.tree_util.tree_leaves(tree)]
    reals = [jnp.finfo(d).dtype for d in dtypes if jnp.issubdtype(d, jnp.inexact)]
    return max(reals, key=lambda d: d.itemsize, default=jnp.dtype(jnp.float32))


def _widen_to(x, real_dtype):
    """`x` in the real precision `real_dtype` (complex stays complex)."""
    if jnp.iscomplexobj(x):
        return x.astype(jnp.complex128 if real_dtype == jnp.float64 else jnp.complex64)
    return x.astype(real_dtype)


def global_norm(updates: Updates, *, ord: int | float | str | None = None,
                squared: bool = False) -> jax.Array:
    """The global norm of a tree: by default the L2 norm that `clip_by_global_norm` bounds.

        ‖u‖_2 = √(Σ_leaves Σ_i |u_i|²)      (ord=None or 2)
        ‖u‖_1 = Σ_leaves Σ_i |u_i|          (ord=1)
        ‖u‖_∞ = max_leaves max_i |u_i|      (ord=inf, "inf" or "infinity")

    The arguments are those of optax's `tree.norm`.

    Args:
      updates: a tree of arrays (None leaves are skipped).
      ord: the order of the norm: None or 2, 1, or inf.
      squared: return the norm squared (for L2, the sum of squares, without the root).

    Returns:
      A scalar, accumulated in float32 for 16-bit leaves (float64 if any leaf is float64). The
      ∞-norm of a tree without elements is 0 (optax's `tree.norm` gives -inf there).
    """
    dtype = norm_dtype(updates)
    leaves = [_widen_to(x, dtype) for x in jax.tree_util.tree_leaves(updates)]
    if ord is None or (not isinstance(ord, str) and ord == 2):
        squares = [jnp.sum(abs_sq(x)) for x in leaves]
        total = functools.reduce(jnp.add, squares) if squares else jnp.zeros([], dtype)
        return total if squared else jnp.sqrt(total)
    if not isinstance(ord, str) and ord == 1:
        sums = [jnp.sum(jnp.abs(x)) for x in leaves]
        norm = functools.reduce(jnp.add, sums) if sums else jnp.zeros([], dtype)
    elif ord in ("inf", "infinity") or (not isinstance(ord, str) and ord == np.inf):
        maxima = [jnp.max(jnp.abs(x)) for x in leaves if x.size]
        norm = functools.reduce(jnp.maximum, maxima) if maxima else jnp.zeros([], dtype)
    else:
        raise ValueError(f"global_norm: ord must be None, 1, 2 or inf, got {ord!r}")
    return norm * norm if squared else norm


@pytree_dataclass
class clip(ElementwiseTransformation):
    """Clips every coordinate of the updates to [-δ, δ]: u_t = min(max(g_t, -δ), δ).

    Args:
      max_delta: δ ≥ 0, a float, an array or a schedule of the step count.

    Returns:
      A transformation; its state holds the step count.
    """

    max_delta: ScalarOrSchedule = hyperparameter(check=non_negative)

    state_type = CountState

    def element(self, s, g):
        return jnp.clip(g, -s.max_delta, s.max_delta), ()   # u_t = min(max(g_t, -δ), δ)


@pytree_dataclass
class clip_by_block_rms(Transformation):
    """Scales each leaf (block) down so that its root-mean-square is at most τ.

        u_t = g_t / max(1, rms(g_t) / τ),    rms(g) = √(mean_i |g_i|²)   (per leaf)

    Args:
      threshold: τ > 0, a float, an array or a schedule of the step count.

    Returns:
      A transformation; its state holds the step count.
    """

    threshold: ScalarOrSchedule = hyperparameter(check=positive)

    def init(self, params):
        return CountState(count=zero_count())

    def update(self, updates, state, params=None, **extra_args):
        lookup = leaf_scalars(dict(tau=self.at(state.count).threshold))

        def clip_block(g):
            w = _widen_to(g, norm_dtype(g))
            denom = jnp.maximum(1.0, jnp.sqrt(jnp.mean(abs_sq(w))) / lookup(w).tau)
            return (w / denom).astype(g.dtype)

        updates = jax.tree.map(clip_block, updates)
        return updates, CountState(count=safe_increment(state.count))


class ClipByGlobalNormState(NamedTuple):
    """`global_norm` is ‖g_t‖ of the last updates before clipping (for logging)."""

    count: Any
    global_norm: Any


@pytree_dataclass
class clip_by_global_norm(Transformation):
    """Rescales all updates together so that their global norm is at most c.

        u_t = g_t · c / max(‖g_t‖, c),    ‖g‖ = √(Σ_leaves Σ_i g_i²)

    One scalar factor multiplies every leaf (no per-leaf select), so the clip is one pass over
    the updates; below the threshold the factor is exactly 1. The norm before clipping is kept
    in the state as `global_norm` for logging, e.g.
    `get_state(opt, state, "clip_by_global_norm").global_norm`. A non-finite norm gives
    non-finite updates, as in optax; `apply_if_finite` or `zero_nans` deal with those.

    Args:
      max_norm: c > 0, a float, an array or a schedule of the step count.

    Returns:
      A transformation with state `ClipByGlobalNormState(count, global_norm)`.

    References:
      Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
      ICML 2013.
    """

    max_norm: ScalarOrSchedule = hyperparameter(check=positive)

    def init(self, params):
        return ClipByGlobalNormState(
            count=zero_count(), global_norm=jnp.zeros([], norm_dtype(params))
        )

    def update(self, updates, state, params=None, **extra_args):
        scalars, new_state = self.tree_scalars(updates, state)
        lookup = leaf_scalars(scalars)
        updates = jax.tree.map(lambda g: g * lookup(g).factor, updates)   # g c / max(‖g‖, c)
        return updates, new_state

    # The two halves of update, for the fast path (see protocol/elementwise.py).
    def tree_scalars(self, updates, state):
        """The factor c / max(‖g‖, c) from the whole tree, and the new state."""
        norm = global_norm(updates).astype(state.global_norm.dtype)
        c = cast_scalars(dict(c=self.at(state.count).max_norm), norm.dtype).c
        factor = c / jnp.maximum(norm, c)
        return {"factor": factor}, ClipByGlobalNormState(count=safe_increment(state.count),
                                                         global_norm=norm)

    def element(self, s, g):
        return g * s.factor, ()


def _batch_size(grads, owner: str) -> int:
    """The common size of axis 0 of every leaf (the examples), with an error naming the leaf
    that has none or another."""
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    if not leaves:
        raise ValueError(f"{owner}: grads is an empty tree; pass per-example gradients")
    sizes: dict[int, str] = {}
    for path, g in leaves:
        if jnp.ndim(g) == 0:
            raise ValueError(
                f"{owner}: leaf '{tree_utils.path_str(path)}' is a scalar; every leaf needs the "
                f"examples on axis 0 (e.g. from jax.vmap(jax.grad(loss), in_axes=(None, 0)))"
            )
        sizes.setdefault(jnp.shape(g)[0], tree_utils.path_str(path))
    if len(sizes) > 1:
        found = ", ".join(f"{n} at '{where}'" for n, where in sizes.items())
        raise ValueError(f"{owner}: leaves have different numbers of examples on axis 0 ({found})")
    return next(iter(sizes))


def _check_clip_norm(owner: str, name: str, value) -> None:
    """A concrete clip norm must be >= 0 (NaN is not); a traced one is not checked."""
    values = concrete_values(value)
    if values is not None and any(non_negative(v) is not None for v in values):
        raise ValueError(f"{owner}: {name} must be >= 0, got {value!r}")


def _clip_examples(grads, clip_norm):
    """Σ_i c_i g_i with c_i = min(1, C / ‖g_i‖) (1 where ‖g_i‖ = 0), and how many c_i < 1."""
    norms = jax.vmap(global_norm)(grads)
    c = cast_scalars(dict(c=clip_norm), norms.dtype).c
    factors = jnp.where(norms > c, c / jnp.where(norms > c, norms, 1), 1)
    clipped = jax.tree.map(
        lambda g: jnp.tensordot(factors.astype(g.dtype), g, axes=1), grads
    )
    return clipped, jnp.sum(factors < 1).astype(jnp.int32)


def per_example_global_norm_clip(grads: Updates,
                                 l2_norm_clip: ArrayLike) -> tuple[Updates, jax.Array]:
    """Clips each example's gradient to global norm C, then sums over the examples (DP-SGD).

        Σ_i g_i · min(1, C / ‖g_i‖),    ‖g_i‖ = √(Σ_leaves Σ_j g_i,j²)

    Args:
      grads: a tree whose every leaf has the examples on axis 0 (e.g. the result of
        `jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)`).
      l2_norm_clip: C ≥ 0.

    Returns:
      `(summed, num_clipped)`: the tree of clipped gradients summed over the examples (axis 0
      removed), and how many examples had a norm above C (int32).

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1; optax's
      `per_example_global_norm_clip`, whose arguments and results this keeps.
    """
    owner = "per_example_global_norm_clip"
    _batch_size(grads, owner)
    _check_clip_norm(owner, "l2_norm_clip", l2_norm_clip)
    return _clip_examples(grads, l2_norm_clip)


def per_example_layer_norm_clip(grads: Updates, global_l2_norm_clip: ArrayLike,
                                uniform: bool = True) -> tuple[Updates, Updates]:
    """Clips each example's gradient leaf by leaf ("per layer"), then sums over the examples.

        Σ_i g_i,k · min(1, C_k / ‖g_i,k‖)     for each leaf k of K, with
        C_k = C / √K                (uniform=True)
        C_k = C √(D_k / D)          (uniform=False; D_k parameters in leaf k, D in all)

    Either way Σ_k C_k² = C², so each clipped example has global norm at most C.

    Args:
      grads: a tree whose every leaf has the examples on axis 0.
      global_l2_norm_clip: C ≥ 0.
      uniform: split C equally over the leaves, or by their sizes.

    Returns:
      `(summed, num_clipped)`: trees like `grads` (axis 0 removed), and for each leaf the
      number of examples clipped there (int32).

    References:
      McMahan et al., "Learning Differentially Private Recurrent Language Models", ICLR 2018;
      optax's `per_example_layer_norm_clip`, whose arguments and results this keeps.
    """
    owner = "per_example_layer_norm_clip"
    _batch_size(grads, owner)
    _check_clip_norm(owner, "global_l2_norm_clip", global_l2_norm_clip)
    leaves, treedef = jax.tree.flatten(grads)
    sizes = [int(np.prod(jnp.shape(g)[1:], dtype=np.int64)) for g in leaves]
    shares = [1 / len(leaves)] * len(leaves) if uniform else [n / sum(sizes) for n in sizes]
    results = [_clip_examples(g, global_l2_norm_clip * share**0.5)
               for g, share in zip(leaves, shares, strict=True)]
    return (jax.tree.unflatten(treedef, [r[0] for r in results]),
            jax.tree.unflatten(treedef, [r[1] for r in results]))


def unitwise_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """The L2 norm of each unit of `x`, broadcast back to `x`'s shape (used by AGC).

        ‖x_i‖ = √(Σ_{j in unit i} |x_j|²)

    Args:
      x: an array.
      axis: the axes a unit spans. None follows common layouts (as optax): the whole array for
        scalars and vectors, axis 0 for (in, out) matrices and (in, heads, out) kernels, axes
        (0, 1, 2) for HWIO convolutions, (0, 1, 2, 3) for DHWIO ones.

    Returns:
      An array of `x`'s shape holding the norm of the unit each entry belongs to.

    References:
      Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
      Normalization", ICML 2021.
    """
    if axis is not None:
        sq = jnp.sum(abs_sq(x), axis=axis, keepdims=True)
    elif jnp.squeeze(x).ndim <= 1:
        sq = jnp.sum(abs_sq(x), keepdims=True)
    elif x.ndim in (2, 3):
        sq = jnp.sum(abs_sq(x), axis=0, keepdims=True)
    elif x.ndim == 4:
        sq = jnp.sum(abs_sq(x), axis=(0, 1, 2), keepdims=True)
    elif x.ndim == 5:
        sq = jnp.sum(abs_sq(x), axis=(0, 1, 2, 3), keepdims=True)
    else:
        raise ValueError(
            f"adaptive_grad_clip: a leaf has shape {x.shape}; the default units cover ranks 0 "
            f"to 5. Pass axis=... to say which axes form a unit."
        )
    return jnp.broadcast_to(jnp.sqrt(sq), x.shape)


def unitwise_clip(g_norm: ArrayLike, max_norm: ArrayLike, grad: ArrayLike,
                  div_eps: ArrayLike = 1e-6) -> jax.Array:
    """Clips each unit of `grad` whose norm is at least its bound (AGC's clipping step).

        u_i = g_i                                 if ‖g_i‖ < m_i
        u_i = g_i · m_i / max(‖g_i‖, δ)           otherwise

    with ‖g_i‖ from `unitwise_norm` and m_i the bound of unit i (`adaptive_grad_clip` uses
    λ max(‖θ_i‖, ε)); δ only guards the division.

    Args:
      g_norm: the unit norms of `grad`, broadcast to its shape (`unitwise_norm(grad)`).
      max_norm: the bound of each unit, of the same shape.
      grad: the array to clip.
      div_eps: δ > 0 (1e-6).

    Returns:
      An array of `grad`'s shape and dtype.

    References:
      Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
      Normalization", ICML 2021.
    """
    shapes = {"g_norm": jnp.shape(g_norm), "max_norm": jnp.shape(max_norm),
              "grad": jnp.shape(grad)}
    if len(set(shapes.values())) > 1:
        found = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise ValueError(f"unitwise_clip: g_norm, max_norm and grad must have one shape, got "
                         f"{found}; broadcast the norms with unitwise_norm")
    g_norm, max_norm, grad = jnp.asarray(g_norm), jnp.asarray(max_norm), jnp.asarray(grad)
    clipped = grad * (max_norm / jnp.maximum(g_norm, div_eps))
    return jnp.where(g_norm < max_norm, grad, clipped)


def _as_axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


@pytree_dataclass(positional=3)
class adaptive_grad_clip(Transformation):
    """Adaptive gradient clipping (AGC): bounds each unit's gradient norm relative to its weights.

        u_i = g_i                                  if ‖g_i‖ < λ max(‖θ_i‖, ε)
        u_i = g_i · λ max(‖θ_i‖, ε) / ‖g_i‖        otherwise

    for every unit i (a row of outputs, a convolution filter; see `unitwise_norm`).

    Args:
      clipping: λ ≥ 0, the largest allowed ratio ‖g_i‖ / ‖θ_i‖.
      eps: ε ≥ 0, keeps zero-initialised weights (biases) from having their gradients
        clipped to zero.
      axis: the axes that form a unit (int or tuple), or None for the layout defaults.

    Returns:
      A transformation; its state holds the step count. `update` needs params.

    References:
      Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
      Normalization", ICML 2021.
    """

    clipping: ScalarOrSchedule = hyperparameter(check=non_negative)
    eps: ScalarOrSchedule = hyperparameter(1e-3, check=non_negative)
    axis: Any = static(None)

    def __post_init__(self):
        object.__setattr__(self, "axis", _as_axis(self.axis))
        super().__post_init__()

    def init(self, params):
        return CountState(count=zero_count())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, "adaptive_grad_clip")
        hp = self.at(state.count)
        lookup = leaf_scalars(dict(clipping=hp.clipping, eps=hp.eps))

        def clip_units(g, p):
            dt = norm_dtype(g)
            w = _widen_to(g, dt)
            g_norm = unitwise_norm(w, self.axis)
            p_norm = unitwise_norm(_widen_to(p, dt), self.axis)
            s = lookup(w)
            max_norm = s.clipping * jnp.maximum(p_norm, s.eps)   # λ max(‖θ_i‖, ε)
            return unitwise_clip(g_norm, max_norm, w).astype(g.dtype)

        updates = jax.tree.map(clip_units, updates, params)
        return updates, CountState(count=safe_increment(state.count))


class ZeroNansState(NamedTuple):
    """`found_nan` holds, per leaf, whether the last updates had a NaN there."""

    found_nan: Any


@pytree_dataclass
class zero_nans(Transformation):
    """Replaces NaNs in the updates by zero: u_i = 0 if g_i is NaN else g_i.

    The state records, per leaf, whether a NaN was found at the last call (for logging);
    infinities pass through. To skip a whole step instead, use `apply_if_finite`.

    Returns:
      A transformation with state `ZeroNansState(found_nan)`.
    """

    def init(self, params):
        return ZeroNansState(found_nan=jax.tree.map(lambda _: jnp.zeros([], jnp.bool_), params))

    def update(self, updates, state, params=None, **extra_args):
        found = jax.tree.map(lambda g: jnp.any(jnp.isnan(g)), updates)
        updates = jax.tree.map(lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates)
        return updates, ZeroNansState(found_nan=found)

