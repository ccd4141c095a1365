"""Runs of elementwise transformations in a chain, composed into one per-leaf function.

A chain (nested chains flattened) is cut into maximal runs of consecutive elementwise
transformations (`ElementwiseTransformation`), each run optionally led by a transformation
with whole-tree scalars (`tree_scalars`, e.g. clip_by_global_norm). A run's per-element
equations, composed in order (and followed by θ + u when the run ends the chain and the step
applies the update), are one function of (scalars, buffers, gradient, param) per leaf. That
function is traced once into a register program for the vector kernel, which updates each
leaf's params and buffers in one pass over memory. Nothing here knows any optimizer: a new
elementwise transformation is fused as soon as it declares its `element`.

make_step runs the last run of a chain, the one that ends in θ + u, through the kernel, in
place; members before it run their own `update`, and leaves the kernel does not take (too
small, other dtypes) run the same composed function through XLA.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.composition.combine import chain
from gradxform._src.fast import kernel
from gradxform._src.protocol.elementwise import (
    ElementwiseTransformation,
    cast_scalars,
    real_precision,
)
from gradxform._src.protocol.updates import apply_updates

# Leaves smaller than this run through XLA: a kernel call's fixed cost (about 10 µs) is more
# than the passes over memory it saves there (see benchmarks/README.md).
MIN_LEAF_ELEMENTS = 1 << 14

_KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def flat_members(transformation, state) -> list[tuple[Any, Any]]:
    """(transformation, state) of each member of nested chains, in the order they run."""
    if type(transformation) is chain:
        return [pair for t, s in zip(transformation.transforms, state, strict=True)
                for pair in flat_members(t, s)]
    return [(transformation, state)]


def _rebuild(transformation, new_states: list):
    """The state of `transformation` from its members' new states (consumed in order)."""
    if type(transformation) is chain:
        return tuple(_rebuild(t, new_states) for t in transformation.transforms)
    return new_states.pop(0)


def leads(t) -> bool:
    """Whether `t` may lead a run: its update is elementwise given whole-tree scalars."""
    return callable(getattr(t, "tree_scalars", None)) and callable(getattr(t, "element", None))


def runs(members: list) -> list[tuple[int, int]]:
    """[start, stop) of each maximal run of elementwise members (a leading one may start it)."""
    out, i, n = [], 0, len(members)
    while i < n:
        j = i + 1 if leads(members[i]) else i
        while j < n and isinstance(members[j], ElementwiseTransformation):
            j += 1
        if j > i and any(isinstance(m, ElementwiseTransformation) for m in members[i:j]):
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


class _Run(NamedTuple):
    members: tuple
    apply: bool  # the run ends the chain and θ + u is part of it

    @property
    def reads_params(self) -> bool:
        return self.apply or any(getattr(m, "needs_params", False) for m in self.members)


def leaf_function(run: _Run, scalars: list[dict], g, buffers: list[tuple], p, applies=None):
    """The run's composed equations on one leaf: (θ + u or u, new buffers of each member).

    `applies[k]` False: member k's mask leaves this leaf out (u passes, its buffers stay)."""
    u, new = g, []
    cast: list[dict] = [{} for _ in run.members]
    applies = applies or (True,) * len(run.members)
    for k, (t, sc, bufs) in enumerate(zip(run.members, scalars, buffers, strict=True)):
        if not applies[k]:
            new.append(tuple(bufs))
        elif isinstance(t, ElementwiseTransformation):
            u, nb = t.leaf_update(sc, u, bufs, p, cast=cast[k])
            new.append(nb)
        else:  # a leading member: no buffers
            u, _ = t.element(cast_scalars(sc, real_precision(u)), u)
            new.append(())
    return (apply_updates(p, u) if run.apply else u), new


def _scalar_signature(scalars: list[dict]):
    """What the program depends on besides the arrays' values: names, Python numbers (folded
    into the program) and the dtypes of array scalars. None where a scalar is not 0-d."""
    sig, flat = [], []
    for sc in scalars:
        entry: list[tuple[str, str, Any]] = []
        for name, v in sc.items():
            if v is None or isinstance(v, bool | int | float):
                entry.append((name, "py", v))
            else:
                v = jnp.asarray(v)
                if v.shape != () or not (jnp.issubdtype(v.dtype, jnp.number)
                                         or v.dtype == jnp.bool_):
                    return None, None
                entry.append((name, "array", str(v.dtype)))
                flat.append(v)
        sig.append(tuple(entry))
    return tuple(sig), flat


def _unflatten_scalars(sig, flat) -> list[dict]:
    it = iter(flat)
    return [{name: (next(it) if kind == "array" else v) for name, kind, v in entry}
            for entry in sig]


def _program(run: _Run, sig, buffer_counts, dtypes, applies):
    """The kernel program of the run for leaves of these input dtypes (cached), or None."""
    key = (tuple(jax.tree_util.tree_structure(m) for m in run.members), run.apply, sig,
           buffer_counts, dtypes, applies)

    def fn(flat, *vectors):
        k = 1 if run.reads_params else 0
        p = vectors[0] if k else None
        g = vectors[-1]
        buffers, at = [], k
        for n in buffer_counts:
            buffers.append(tuple(vectors[at:at + n]))
            at += n
        out, new = leaf_function(run, _unflatten_scalars(sig, flat), g, buffers, p, applies)
        return (out, *[b for nb in new for b in nb])

    avals = [jax.ShapeDtypeStruct((), jnp.dtype(kind_or_dtype))
             for entry in sig for _, kind, kind_or_dtype in entry if kind == "array"]
    return kernel.program_for(key, fn, avals, dtypes)


def run_elementwise(run: _Run, states: list, updates, params, *, in_place: bool):
    """The run on a tree: (θ + u or u, the members' new states). The kernel takes the leaves
    it can (float32 gradients and params, float32 or bfloat16 buffers, large enough); the
    others run the same composed function through XLA."""
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    p_leaves = (treedef.flatten_up_to(params) if run.reads_params else [None] * len(leaves))
    scalars, counts, lead_state = [], [], None
    for t, s in zip(run.members, states, strict=True):
        if isinstance(t, ElementwiseTransformation):
            sc, count = t.scalars_at(s)
        else:
            sc, lead_state = t.tree_scalars(updates, s)
            count = None
        scalars.append(sc)
        counts.append(count)
    buffer_leaves = [
        [treedef.flatten_up_to(getattr(s, f)) for f in t.buffer_fields]
        if isinstance(t, ElementwiseTransformation) else []
        for t, s in zip(run.members, states, strict=True)
    ]
    buffer_counts = tuple(len(b) for b in buffer_leaves)
    sig, flat = _scalar_signature(scalars)
    masks = []  # per member, whether its equation applies to each leaf (a weight-decay mask)
    for t in run.members:
        mask = (t.leaf_mask(params) if params is not None
                and callable(getattr(t, "leaf_mask", None)) else None)
        masks.append([True] * len(leaves) if mask is None else treedef.flatten_up_to(mask))
    applies = [tuple(bool(m[i]) for m in masks) for i in range(len(leaves))]

    outs: list = [None] * len(leaves)
    new_bufs: list = [None] * len(leaves)
    groups: dict = {}  # input dtypes -> leaf indices for the kernel
    for i, g in enumerate(leaves):
        ins = ([p_leaves[i]] if run.reads_params else []) + \
              [b[i] for bl in buffer_leaves for b in bl] + [g]
        dtypes = tuple(jnp.dtype(jnp.result_type(x)) for x in ins)
        if sig is not None and kernel.element_count(g) >= MIN_LEAF_ELEMENTS \
                and all(d in _KERNEL_DTYPES for d in dtypes) \
                and jnp.result_type(g) == jnp.float32:
            groups.setdefault((dtypes, applies[i]), []).append(i)
    for (dtypes, leaf_applies), idx in groups.items():
        prog = _program(run, sig, buffer_counts, dtypes, leaf_applies)
        if prog is None:
            continue
        values = prog.scalars.values(flat)
        n_p = 1 if run.reads_params else 0
        n_out = len(prog.output_dtypes)
        if in_place:  # θ (when applied) and each buffer are overwritten
            aliases = tuple([0 if run.apply else -1] + list(range(n_p, n_p + n_out - 1)))
        else:
            aliases = (-1,) * n_out
        args = [tuple(([p_leaves[i]] if n_p else []) +
                      [b[i] for bl in buffer_leaves for b in bl] + [leaves[i]]) for i in idx]
        for i, res in zip(idx, kernel.run(prog, values, args, aliases), strict=True):
            outs[i], new_bufs[i] = res[0], list(res[1:])
    if all(o is None for o in outs):
        return None
    for i, g in enumerate(leaves):
        if outs[i] is None:  # through XLA
            out, new = leaf_function(
                run, scalars, g,
                [tuple(b[i] for b in bl) for bl in buffer_leaves], p_leaves[i], applies[i])
            outs[i] = out
            new_bufs[i] = [b for nb in new for b in nb]

    new_states, at = [], 0
    for t, count, bl in zip(run.members, counts, buffer_leaves, strict=True):
        if not isinstance(t, ElementwiseTransformation):
            new_states.append(lead_state)
            continue
        trees = [treedef.unflatten([new_bufs[i][at + j] for i in range(len(leaves))])
                 for j in range(len(bl))]
        at += len(bl)
        new_states.append(t.state_type(count, *trees) if t.counts_steps
                          else t.state_type(*trees))
    return treedef.unflatten(outs), new_states


def update_and_apply(optimizer, grads, state, params, *, in_place: bool):
    """`update` and `apply_updates` with the chain's elementwise runs through the kernel, or
    None where no leaf of any run would take it (the caller then runs the XLA program)."""
    if not kernel.available():
        return None
    try:
        members = flat_members(optimizer, state)
    except (TypeError, ValueError):  # a state that is not the chain's: let update say so
        return None
    ts = [t for t, _ in members]
    # Only the run that ends the chain: it updates θ and its buffers in place. An earlier run
    # would write its u into a fresh array, which XLA's program never materializes (it fuses u
    # into what follows); measured 2x slower for Adam before an XLA learning rate.
    spans = [span for span in runs(ts) if span[1] == len(ts)]
    if not spans or jax.tree_util.tree_structure(grads) != jax.tree_util.tree_structure(params):
        return None
    # Checked once, while tracing: a state of another structure gets update's error message.
    expected = jax.tree_util.tree_structure(jax.eval_shape(optimizer.init, params))
    if jax.tree_util.tree_structure(state) != expected:
        return None
    new_states: list = [s for _, s in members]
    u, applied, fused = grads, False, False
    i = 0
    for start, stop in spans + [(len(ts), len(ts))]:
        for k in range(i, start):  # members between runs: their own update
            u, new_states[k] = ts[k].update(u, new_states[k], params)
        if start == stop:
            break
        run = _Run(tuple(ts[start:stop]), apply=stop == len(ts))
        done = run_elementwise(run, new_states[start:stop], u, params, in_place=in_place)
        if done is None:
            for k in range(start, stop):
                u, new_states[k] = ts[k].update(u, new_states[k], params)
        else:
            u, new_states[start:stop] = done
            applied, fused = run.apply, True
        i = stop
    if not fused:
        return None
    new_params = u if applied else apply_updates(params, u)
    return new_params, _rebuild(optimizer, new_states)
