"""Packed trees: many leaves held as one contiguous buffer per dtype.

An optimizer step over a tree of 2,000 small leaves is dominated by per-leaf costs, not by
arithmetic: every leaf is a separate argument and result of the jitted step, a separate buffer to
donate, and a few separate HLO ops to compile. Packing the leaves of each dtype into one flat
buffer makes those costs independent of the number of leaves:

    packed = pack(params)               # PackedTree: a few flat buffers + a static layout
    state = opt.init(packed)            # moments are packed too
    grads = jax.grad(lambda q: loss(q.unpack(), batch))(packed)    # a PackedTree as well
    packed, state = update_and_apply(opt, grads, state, packed)

Elementwise transformations built from +, -, ×, ÷, √ and sign (Adam, AdamW, Lion, SGD with
momentum, weight decay, scaling) give bit-for-bit the same numbers on a packed tree as on the
original one, because each coordinate is computed by the same expression. Those scaled by
1/√s (RMSProp, AdaGrad) agree to float32 rounding: XLA:CPU computes rsqrt approximately in
vectorized loops and exactly on scalars. Global reductions (`clip_by_global_norm`) give the
same value up to the order of summation. Transformations that look at a leaf's shape (per-layer
norms, factored moments, orthogonalisation) or that take per-leaf masks must not see a packed
tree.

`flatten(inner)` packs inside the transformation, for params kept as an ordinary tree (optax's
`flatten`): the state is packed, and each step concatenates the updates and splits the result
(one extra read and write of the updates). With params kept packed, as above, there is nothing
to concatenate and `flatten` costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child
from gradxform._src.protocol.transformation import Transformation


class _Slot(NamedTuple):
    buffer: int  # which buffer holds the leaf
    offset: int  # where it starts in that buffer
    shape: tuple[int, ...]


class PackedLayout(NamedTuple):
    """Where each leaf of the original tree lives: static, hashable data.

    Like a treedef it holds no dtypes: the moments of bf16 params packed in float32 have the
    layout of the params.
    """

    treedef: Any
    slots: tuple[_Slot, ...]


class PackedTree:
    """A tree stored as one flat buffer per dtype; a pytree whose leaves are the buffers.

    Any transformation sees only the buffers, so per-leaf costs (arguments of a jitted step,
    donated buffers, HLO ops) depend on the number of dtypes, not on the number of leaves.
    `unpack()` gives the original tree back (slices of the buffers; inside `jax.jit` they fuse
    into their consumers). Build one with `pack(tree)`.
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers: Iterable[jax.Array], layout: PackedLayout) -> None:
        self.buffers = tuple(buffers)
        self.layout = layout

    def unpack(self) -> Any:
        """The tree that was packed: its structure and shapes, each leaf in its buffer's dtype."""
        leaves = []
        for slot in self.layout.slots:
            buf = self.buffers[slot.buffer]
            size = math.prod(slot.shape)
            leaf = jax.lax.slice_in_dim(buf, slot.offset, slot.offset + size)
            leaves.append(leaf.reshape(slot.shape))
        return jax.tree_util.tree_unflatten(self.layout.treedef, leaves)

    @property
    def num_leaves(self) -> int:
        """Number of leaves of the original tree."""
        return len(self.layout.slots)

    def __repr__(self) -> str:
        bufs = ", ".join(
            f"{np.dtype(getattr(b, 'dtype', np.float32)).name}{list(np.shape(b))}"
            for b in self.buffers
        )
        return f"PackedTree({self.num_leaves} leaves in {bufs})"


def _flatten_packed(p: PackedTree):
    keys = [jax.tree_util.SequenceKey(i) for i in range(len(p.buffers))]
    return list(zip(keys, p.buffers, strict=True)), p.layout


def _unflatten_packed(layout, buffers):
    return PackedTree(buffers, layout)


jax.tree_util.register_pytree_with_keys(
    PackedTree, _flatten_packed, _unflatten_packed,
    flatten_func=lambda p: (p.buffers, p.layout),
)


def pack(tree: Any) -> PackedTree:
    """Packs the leaves of `tree` into one contiguous 1-D buffer per dtype.

    Leaves keep their dtype (no promotion: a bf16 leaf goes to the bf16 buffer), None leaves
    stay None, and buffers come in the order in which their dtype first appears. A PackedTree
    is returned as it is. Leaves split over the axes of a mesh with explicit axis types are
    gathered first: the buffers are replicated.

    Args:
      tree: a pytree of arrays.

    Returns:
      A `PackedTree`; `pack(tree).unpack()` equals `tree`.
    """
    if isinstance(tree, PackedTree):
        return tree
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dtypes: list[str] = []
    parts: list[list] = []
    sizes: list[int] = []
    slots = []
    for leaf in leaves:
        dt = np.dtype(jnp.result_type(leaf)).name
        if dt not in dtypes:
            dtypes.append(dt)
            parts.append([])
            sizes.append(0)
        b = dtypes.index(dt)
        shape = tuple(int(d) for d in jnp.shape(leaf))
        slots.append(_Slot(b, sizes[b], shape))
        sizes[b] += math.prod(shape)
        parts[b].append(jnp.ravel(tree_utils.gathered(jnp.asarray(leaf, dt))))
    buffers = [
        p[0] if len(p) == 1 else jnp.concatenate(p) for p in parts
    ]
    layout = PackedLayout(treedef, tuple(slots))
    return PackedTree(buffers, layout)


def unpack(packed: PackedTree) -> Any:
    """The tree held by `packed` (the inverse of `pack`); any other tree is returned as it is."""
    return packed.unpack() if isinstance(packed, PackedTree) else packed


@pytree_dataclass
class flatten(Transformation):
    """Runs `inner` on params packed into one contiguous buffer per dtype.

        u_t = unpack(inner(pack(g_t), pack(θ_{t-1})))

    The state of `inner` is packed, so a tree of many small leaves costs a few buffers per step
    instead of several per leaf. Adam, AdamW, Lion, SGD with momentum, weight decay and scaling
    give exactly the numbers they give unpacked; RMS scaling and global norms agree to rounding
    (see the module docstring). Do not wrap transformations that depend on a leaf's shape or that
    take per-leaf masks.

    When updates and params are already `PackedTree`s (params kept packed, see `pack`), nothing
    is concatenated or split and the step costs what `inner` costs. Otherwise each step packs
    the updates and params and splits the result, as optax's `flatten` does, but per dtype, so
    16-bit leaves are neither promoted nor rounded differently.

    Args:
      inner: the transformation to run on the packed tree.

    Returns:
      A transformation whose state is `inner`'s state for the packed params.
    """

    inner: Transformation = child()

    def init(self, params):
        return self.inner.init(pack(params))

    def update(self, updates, state, params=None, **extra_args):
        packed_params = None if params is None else pack(params)
        new, state = self.inner.update(pack(updates), state, packed_params, **extra_args)
        if not isinstance(updates, PackedTree):
            new = new.unpack()
        return new, state
