"""Tree helpers shared by the transformations: moment buffers, casts and readable tree checks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

is_none = lambda x: x is None  # noqa: E731


def gathered(x: jax.Array) -> jax.Array:
    """`x`, replicated if its type splits it over the axes of a mesh (explicit axis types).

    Operations that mix the entries of a leaf across its axes in a flat order (packing leaves
    into one buffer, quantizing blocks of consecutive entries) have no sharded form: gather
    first. Arrays that are not split (automatic axes, one device) are returned as they are.
    """
    sharding = getattr(jax.typeof(x), "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and any(
            entry is not None for entry in sharding.spec):
        x = jax.sharding.reshard(
            x, jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    return x


def path_str(path) -> str:
    """A key path as `layer1/w`, the form users write in masks and labels."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts) or "<root>"


def moment_dtype(x, dtype=None):
    """The dtype of an optimizer moment for a leaf like `x`.

    An explicit `dtype` wins. Otherwise 16-bit floating point leaves get float32 moments (their
    squared gradients underflow and their EMAs stall in 16 bits), integer and boolean leaves get
    JAX's default float (an integer moment would truncate every update to nothing; `update` and
    `apply_updates` refuse such params anyway) and every other leaf keeps its own dtype.
    """
    if dtype is not None:
        return jnp.dtype(dtype)
    dt = jnp.result_type(x)
    if not jnp.issubdtype(dt, jnp.inexact):
        return jnp.dtype(jnp.result_type(float))
    if jnp.issubdtype(dt, jnp.floating) and jnp.finfo(dt).bits < 32:
        return jnp.dtype(jnp.float32)
    return dt


def zeros_like(tree, dtype=None):
    """Moment buffers of zeros, one per leaf (None leaves stay None).

    `jnp.zeros_like`, not `jnp.zeros(shape)`: a buffer keeps the sharding of its param.
    """
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=moment_dtype(x, dtype)), tree)


def full_like(tree, value, dtype=None):
    return jax.tree.map(lambda x: jnp.full_like(x, value, dtype=moment_dtype(x, dtype)), tree)


def real_zeros_like(tree, dtype=None):
    """Buffers for a squared magnitude |g|², real even when the leaf is complex."""
    def zeros(x):
        dt = moment_dtype(x, dtype)
        if jnp.issubdtype(dt, jnp.complexfloating):
            dt = jnp.finfo(dt).dtype
        return jnp.zeros_like(x, dtype=dt)

    return jax.tree.map(zeros, tree)


def cast_like(tree, like):
    """Casts each leaf of `tree` to the dtype of the matching leaf of `like`."""
    return jax.tree.map(lambda x, y: x.astype(jnp.result_type(y)), tree, like)


def check_inexact(tree, where: str, what: str) -> None:
    """Refuses integer, boolean and float0 leaves: a gradient step on them is meaningless."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    for path, leaf in leaves:
        dt = getattr(leaf, "dtype", None)
        if dt is None:
            dt = np.result_type(leaf)
        if not jnp.issubdtype(dt, jnp.inexact):
            name = "float0" if dt == jax.dtypes.float0 else np.dtype(dt).name
            raise TypeError(
                f"{where}: {what} leaf '{path_str(path)}' has dtype {name}; gradient "
                f"transformations need floating point (or complex) leaves. Leave integer and "
                f"boolean arrays out of the optimized tree (partition the model, e.g. "
                f"eqx.filter(model, eqx.is_inexact_array) or nnx.state(model, nnx.Param)) or "
                f"cast them to a float dtype."
            )


def leaves_by_path(tree) -> dict:
    """The leaves of `tree` keyed by their paths as `path_str` writes them."""
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def first_missing_path(leaves_a: dict, leaves_b: dict, name_a: str, name_b: str) -> str | None:
    """The first path (of `leaves_by_path` dicts) that only one of two trees has, described."""
    for key in leaves_a:
        if key not in leaves_b:
            return f"'{key}' is in {name_a} but not in {name_b}"
    for key in leaves_b:
        if key not in leaves_a:
            return f"'{key}' is in {name_b} but not in {name_a}"
    return None


def first_difference_of_structures(a, b, name_a: str = "the first tree",
                                   name_b: str = "the second") -> str:
    """Describes the first place where two trees differ in structure (or shape)."""
    missing = first_missing_path(leaves_by_path(a), leaves_by_path(b), name_a, name_b)
    if missing is not None:
        return missing
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    return f"same leaf paths but different node types: {ta} vs {tb}"


def check_same_structure(a, b, where: str, name_a: str, name_b: str) -> None:
    """Raises a ValueError naming the first differing path when `a` and `b` differ in structure."""
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    if ta != tb:
        paths_a = [path_str(p) for p, _ in leaves_a]
        paths_b = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(b)]
        set_b = set(paths_b)
        for p in paths_a:
            if p not in set_b:
                raise ValueError(f"{where}: {name_a} has key '{p}' that {name_b} lacks")
        set_a = set(paths_a)
        for p in paths_b:
            if p not in set_a:
                raise ValueError(f"{where}: {name_b} has key '{p}' that {name_a} lacks")
        raise ValueError(
            f"{where}: {name_a} and {name_b} have the same leaf paths but different node types "
            f"({ta} vs {tb}); build both from the same container types"
        )
    for (path, x), y in zip(leaves_a, jax.tree_util.tree_leaves(b), strict=True):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"{where}: leaf '{path_str(path)}' has shape {jnp.shape(x)} in {name_a} but "
                f"{jnp.shape(y)} in {name_b}"
            )


def tree_map_with_none(fn, tree, *rest) -> Any:
    """`jax.tree.map` that passes None leaves of the first tree through untouched."""
    return jax.tree.map(
        lambda x, *r: None if x is None else fn(x, *r), tree, *rest, is_leaf=is_none
    )


def coef(h, x):
    """A scalar hyperparameter `h` in the dtype of leaf `x`.

    Python numbers are weakly typed and pass through; arrays (a traced hyperparameter, a schedule's
    value, a vmapped sweep) are cast, so a float32 learning rate never promotes bf16 updates and
    strict dtype promotion holds.
    """
    if isinstance(h, int | float | complex):
        return h
    h = jnp.asarray(h)
    dt = jnp.result_type(x)
    if jnp.issubdtype(dt, jnp.complexfloating) and not jnp.issubdtype(h.dtype, jnp.complexfloating):
        dt = jnp.finfo(dt).dtype
    return h.astype(dt)


def update_precision(g, m):
    """The dtype in which a moment `m` of updates `g` is updated: the wider of their precisions.

    A bfloat16 moment of float32 gradients is updated in float32, used in float32 by the step,
    and rounded once, when stored: the moment's dtype is a storage format (optax too stores the
    moment in its dtype, but forms β·m in it first, rounding twice). The float32 moment of
    16-bit gradients widens them.
    """
    m_dt = jnp.dtype(jnp.result_type(m))
    g_real = jnp.finfo(jnp.result_type(g)).dtype  # complex gradients: their real precision
    if jnp.finfo(g_real).bits <= jnp.finfo(m_dt).bits:
        return m_dt
    if jnp.issubdtype(m_dt, jnp.complexfloating):
        return jnp.dtype(jnp.complex128 if g_real == jnp.float64 else jnp.complex64)
    return g_real


def in_update_precision(m, g):
    """The stored moment `m` in `update_precision(g, m)`."""
    return m.astype(update_precision(g, m))


def widen(g, m):
    """`g` in the precision of moment `m` (complex stays complex when `m` holds a real |g|²)."""
    dt = jnp.result_type(m)
    if jnp.iscomplexobj(g) and not jnp.issubdtype(dt, jnp.complexfloating):
        dt = jnp.promote_types(dt, jnp.complex64)
    return g.astype(dt)


# -- inner products and steps along a direction (line searches, quasi-Newton methods) --


def accumulation_dtype(tree) -> jnp.dtype:
    """The real dtype in which inner products of `tree` are accumulated: float32 for 16-bit
    leaves, else the widest real precision of the leaves (float32 for an empty tree)."""
    dtypes = [moment_dtype(x) for x in jax.tree_util.tree_leaves(tree)]
    reals = [jnp.finfo(d).dtype for d in dtypes if jnp.issubdtype(d, jnp.inexact)]
    return max(reals, key=lambda d: d.itemsize, default=jnp.dtype(jnp.float32))


def tree_vdot(a, b, dtype=None) -> jax.Array:
    """Re ⟨a, b⟩ = Re Σ_leaves Σ_i conj(a_i) b_i, accumulated in `dtype` (default
    `accumulation_dtype(a)`); None leaves are skipped.

    Each leaf's product is one `tensordot` at the highest matmul precision, summed over the
    leaves in tree order, as optax's `tree.vdot` forms it.
    """
    dtype = accumulation_dtype(a) if dtype is None else jnp.dtype(dtype)
    total = jnp.zeros([], dtype)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if jnp.iscomplexobj(x):
            x = jnp.conj(x)
        wide = jnp.promote_types(dtype, x.dtype) if jnp.iscomplexobj(x) else dtype
        d = jnp.tensordot(x.astype(wide), y.astype(wide), x.ndim,
                          precision=jax.lax.Precision.HIGHEST)
        total = total + jnp.real(d).astype(dtype)
    return total


def tree_add_scale(a, s, b):
    """a + s b leaf by leaf, with the scalar `s` in each leaf's dtype (None leaves stay None)."""
    return tree_map_with_none(lambda x, y: x + coef(s, x) * y, a, b)


def tree_scale(s, a):
    """s a leaf by leaf, with the scalar `s` in each leaf's dtype (None leaves stay None)."""
    return tree_map_with_none(lambda x: coef(s, x) * x, a)
