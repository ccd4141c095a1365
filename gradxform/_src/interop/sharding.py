"""Placing optimizer state on a device mesh: follow the params, or split it over the data axis.

`init` builds each moment buffer with `zeros_like(param)`, so eagerly (and under jit with
explicit mesh axes) the state already has the sharding of its params, and updates computed from
sharded gradients keep it. Under jit with automatic mesh axes the compiler chooses the shardings
of outputs it has no constraint for; `state_shardings` gives the ones to ask for:

    shardings = state_shardings(opt, params)                      # follow the params
    shardings = state_shardings(opt, params, data_axis="data")    # ZeRO-1
    state = jax.jit(opt.init, out_shardings=shardings)(params)
    step = jax.jit(step, out_shardings=(param_shardings, shardings))
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.transformation import Params, Transformation


def _segments(path) -> tuple[str, ...]:
    return tuple(tree_utils.path_str((key,)) for key in path)


def _with_data_axis(spec: tuple, shape: tuple, axis: str, size: int) -> tuple:
    """`spec` with `axis` on the first dimension it leaves whole and `size` divides."""
    used = {a for entry in spec if entry is not None
            for a in (entry if isinstance(entry, tuple) else (entry,))}
    if axis in used:
        return spec
    for d, (entry, n) in enumerate(zip(spec, shape, strict=True)):
        if entry is None and n > 0 and n % size == 0:
            return spec[:d] + (axis,) + spec[d + 1:]
    return spec


def state_shardings(optimizer: Transformation, params: Params, *,
                    data_axis: str | None = None) -> Any:
    """A `NamedSharding` for every leaf of `optimizer.init(params)`.

    A state leaf follows the param whose path it ends with and whose shape it has: Adam's
    `0/mu/dense/w` is laid out like `dense/w`. A state whose type has a `param_axes(field,
    tail, param_shape, leaf_shape)` method says which param axes each of its leaves keeps: a
    factored row statistic of `dense/w` (`scale_by_factored_rms`) is laid out like the rows of
    `dense/w`, SM3's accumulator of axis 1 like its axis 1. Other leaves (step counts, norms,
    flags, placeholders) are replicated.

    With `data_axis` (ZeRO stage 1), the state is also split over that mesh axis: a leaf whose
    param is replicated along `data_axis`, as in data-parallel training, is split along it on
    its first dimension that is not split already and that the axis size divides (leaves
    without one stay replicated). Each device then holds 1/n of the moments; the step computes
    the update of its slice and gathers the params, which stay replicated. The numbers are
    those of the unsplit run.

    Args:
      optimizer: the transformation whose state to place.
      params: the params, with a `NamedSharding` on at least one leaf (the mesh is read from
        it); arrays or `jax.ShapeDtypeStruct`s with a sharding.
      data_axis: the mesh axis that splits the batch, or None.

    Returns:
      A tree of `NamedSharding` with the structure of the state, for `jax.jit(...,
      out_shardings=...)`, `jax.device_put` or `jax.lax.with_sharding_constraint`.

    References:
      Rajbhandari, Rasley, Ruwase & He, "ZeRO: Memory Optimizations Toward Training Trillion
      Parameter Models", SC 2020 (stage 1: optimizer state partitioning).
    """
    named = []
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        sharding = getattr(p, "sharding", None)
        if isinstance(sharding, NamedSharding):
            named.append((_segments(path), tuple(p.shape), sharding))
    if not named:
        raise ValueError(
            "state_shardings: no leaf of params has a NamedSharding; place the params on a mesh "
            "first, e.g. jax.device_put(params, NamedSharding(mesh, PartitionSpec()))"
        )
    mesh = named[0][2].mesh
    if data_axis is not None and data_axis not in mesh.shape:
        raise ValueError(
            f"state_shardings: data_axis {data_axis!r} is not an axis of the params' mesh; its "
            f"axes are {tuple(mesh.shape)}"
        )

    def spec_of(axes, param_spec, shape):
        spec = ()
        if axes is not None:
            param_spec = tuple(param_spec) + (None,) * (max(axes, default=-1) + 1)
            spec = tuple(param_spec[a] for a in axes)
        spec = spec + (None,) * (len(shape) - len(spec))
        if data_axis is not None:
            spec = _with_data_axis(spec, shape, data_axis, mesh.shape[data_axis])
        return NamedSharding(mesh, PartitionSpec(*spec))

    def place(path, leaf):
        # A leaf of a moment tree: it follows the longest param path it ends with, if it has
        # that param's shape.
        segs, shape = _segments(path), tuple(jax.numpy.shape(leaf))
        best = None
        for psegs, pshape, sharding in named:
            if pshape == shape and segs[len(segs) - len(psegs):] == psegs and (
                best is None or len(psegs) > len(best[0])
            ):
                best = (psegs, sharding)
        axes = tuple(range(len(shape))) if best is not None else None
        return spec_of(axes, best[1].spec if best is not None else (), shape)

    def place_declared(node, path):
        # A state whose type says which param axes each of its leaves keeps (factored row and
        # column statistics, SM3's per-axis accumulators): the leaf takes those axes' specs.
        out = {}
        for field in node._fields:
            def one(rel, leaf, field=field):
                rsegs, shape = _segments(rel), tuple(jax.numpy.shape(leaf))
                best = None
                for psegs, pshape, sharding in named:
                    for i in range(len(rsegs) - len(psegs) + 1):
                        if rsegs[i:i + len(psegs)] == psegs and (
                            best is None or len(psegs) > len(best[0])
                        ):
                            best = (psegs, rsegs[i + len(psegs):], pshape, sharding)
                if best is None:
                    return place(path + (jax.tree_util.GetAttrKey(field),) + rel, leaf)
                _, tail, pshape, sharding = best
                axes = node.param_axes(field, tail, pshape, shape)
                return spec_of(axes, sharding.spec if axes is not None else (), shape)

            out[field] = jax.tree_util.tree_map_with_path(one, getattr(node, field))
        return type(node)(**out)

    def declares(x):
        return isinstance(x, tuple) and hasattr(type(x), "_fields") and callable(
            getattr(type(x), "param_axes", None))

    abstract_state = jax.eval_shape(optimizer.init, params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=declares)
    return treedef.unflatten([
        place_declared(x, path) if declares(x) else place(path, x) for path, x in flat
    ])
