"""Elementwise transformations: the update of each element reads only that element.

Most optimizers are elementwise: Adam, Lion, momentum, weight decay and the learning rate all
update coordinate i from g_i, the buffers' i-th entries (moments) and p_i, given a few numbers
per step (hyperparameters, bias corrections). Such a transformation declares its per-element
equation and the numbers it needs, and `ElementwiseTransformation.update` does the rest once
for all of them:

    class scale_by_adam(ElementwiseTransformation):
        state_type = ScaleByAdamState          # (count, mu, nu): the buffers follow the count

        def step_scalars(self, hp, t):         # once per step: hp at this step, t = count + 1
            return dict(b1=hp.b1, b2=hp.b2, eps=hp.eps, eps_root=hp.eps_root,
                        c1=1 / one_minus_power(hp.b1, t), c2=1 / one_minus_power(hp.b2, t))

        def element(self, s, g, m, v, p=None): # once per leaf, as the paper writes it
            m = s.b1 * m + (1 - s.b1) * g
            v = s.b2 * v + (1 - s.b2) * g * g
            return m * s.c1 / (jnp.sqrt(v * s.c2 + s.eps_root) + s.eps), (m, v)

What `update` does around `element`, so that no transformation repeats it:
- hyperparameters are resolved at the state's step count (schedules are called) once;
- each buffer stored in a narrower dtype than the gradients (`mu_dtype=bfloat16`) is widened
  to the gradients' precision, updated there, and rounded once when stored;
- the gradient is widened to the buffers' precision (float32 moments of bfloat16 params);
- every scalar that is an array (a traced hyperparameter, a schedule's value, a vmapped sweep)
  is cast once per leaf precision to that precision (Python numbers stay weakly typed), so the
  equations read without casts and strict dtype promotion holds;
- the update is returned in the gradients' dtype, the buffers in their stored dtypes.

Because the equation is a pure function of one element's values, the fast path
(`gradxform.make_step`) can compose the equations of consecutive elementwise transformations
of a chain, and the final `params + updates`, into one pass over memory.

Whole-tree scalars. A transformation that is elementwise once a few numbers computed from its
whole input are known (clip_by_global_norm: u = g · c / max(‖g‖, c)) may declare, besides its
own `update`, the two halves of it:

- `tree_scalars(updates, state) -> (scalars, new_state)`: the reduction over the tree (the
  norm, the factor) and the new state, exactly as `update` computes them;
- `element(s, g) -> (u, ())`: the update of one element given those scalars (no buffers).

`update` must equal `element` applied to every leaf with the scalars cast to the leaf's real
precision. The fast path composes such a transformation when it leads a run of elementwise
ones (the reduction needs the run's input, so it must come first).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.transformation import Transformation, require_params, safe_increment


def real_precision(*arrays) -> jnp.dtype:
    """The widest real floating precision among the arrays (a complex64 leaf counts as float32).

    Of two precisions of the same width (float16, bfloat16), the first array's wins.
    """
    dtypes = [jnp.finfo(jnp.result_type(x)).dtype for x in arrays]
    return max(dtypes, key=lambda d: jnp.finfo(d).bits)


def cast_scalars(scalars: Mapping[str, Any], dtype) -> types.SimpleNamespace:
    """The step's scalars for a leaf computed in `dtype`: arrays cast, Python numbers unchanged.

    Boolean arrays (a flag such as "this is the first step") stay boolean.
    """
    out: dict[str, Any] = {}
    for name, value in scalars.items():
        if value is None or isinstance(value, bool | int | float | complex):
            out[name] = value
        elif jnp.result_type(value) == jnp.bool_:
            out[name] = value
        else:
            out[name] = jnp.asarray(value).astype(dtype)
    return types.SimpleNamespace(**out)


def leaf_scalars(scalars: Mapping[str, Any]) -> Callable[..., types.SimpleNamespace]:
    """`lookup(*arrays)`: the scalars cast to the arrays' widest real precision.

    For transformations that are not elementwise (factored moments, norms, averages): resolve
    the hyperparameters once per update, then write each leaf's equation with
    `s = lookup(g, v)`, `v = s.b2 * v + (1 - s.b2) * g * g`, without a cast on every term.
    Each call casts anew: XLA turns a division by a scalar cast for one leaf into a product with
    its reciprocal, but keeps the division when several leaves share the cast, and the two
    differ in the last bit.
    """

    def lookup(*arrays) -> types.SimpleNamespace:
        return cast_scalars(scalars, real_precision(*arrays))

    return lookup


class _LeafResults:
    """One leaf's results, opaque to tree mapping (params may themselves hold tuples)."""

    __slots__ = ("values",)

    def __init__(self, values):
        self.values = values


def map_leaves(fn: Callable[..., tuple], tree, *rest, num_outputs: int) -> tuple:
    """`fn` on each leaf of `tree` and the matching leaves of `rest`, for an `fn` returning a
    tuple of `num_outputs` arrays: one tree like `tree` per output (None leaves stay None)."""
    out = jax.tree.map(lambda *leaves: _LeafResults(fn(*leaves)), tree, *rest)
    is_result = lambda x: isinstance(x, _LeafResults)  # noqa: E731
    return tuple(jax.tree.map(lambda r, i=i: r.values[i], out, is_leaf=is_result)
                 for i in range(num_outputs))


class ElementwiseTransformation(Transformation):
    """A transformation declared by its per-element equation (see the module docstring).

    Subclasses set `state_type`, a NamedTuple whose fields are `count` (if the transformation
    counts steps) followed by one buffer per leaf, in the order `element` takes and returns
    them, and define:

    - `init_buffers(params) -> tuple` of buffer trees (none by default);
    - `step_scalars(hp, t) -> dict` of the numbers the step needs, from the hyperparameters `hp`
      resolved at this step and the new count t = count + 1 (by default the numeric
      hyperparameters themselves);
    - `element(s, g, *buffers, p=None) -> (u, buffers)`: the equation for one leaf, with the
      scalars as attributes of `s`. `p` is the leaf of params when `needs_params` is set;
    - optionally `leaf_mask(params)`: a tree of Python bools like the updates saying on which
      leaves the equation applies (a weight-decay mask); elsewhere the update passes g through
      unchanged and the buffers are kept. It is decided when the update is traced.
    """

    state_type: ClassVar[Any]  # a NamedTuple class
    needs_params: ClassVar[bool] = False

    # -- what a subclass declares ----------------------------------------------------------------
    def init_buffers(self, params) -> tuple:
        return ()

    def step_scalars(self, hp, t) -> dict:
        return {name: getattr(hp, name) for name in self._hyper_fields}

    def element(self, s, g, *buffers, p=None):
        raise NotImplementedError

    def leaf_mask(self, params):
        return None

    # -- the generic protocol --------------------------------------------------------------------
    @property
    def buffer_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.state_type._fields if f != "count")

    @property
    def counts_steps(self) -> bool:
        return "count" in self.state_type._fields

    def init(self, params):
        buffers = tuple(self.init_buffers(params))
        if self.counts_steps:
            return self.state_type(jnp.zeros([], jnp.int32), *buffers)
        return self.state_type(*buffers)

    def scalars_at(self, state) -> tuple[dict, jax.Array | None]:
        """The step's scalars (before casting to each leaf's precision) and the new count."""
        if self.counts_steps:
            t = safe_increment(state.count)
            return self.step_scalars(self.at(state.count), t), t
        return self.step_scalars(self.at(None), None), None

    def leaf_update(self, scalars: Mapping[str, Any], g, buffers: tuple, p=None, *,
                    cast: dict | None = None):
        """`element` on one leaf, with the precision handling described in the module docstring.

        Returns the update in g's dtype and the buffers in their stored dtypes. `cast` caches
        the scalars cast to each precision across the leaves of one update.
        """
        wide = tuple(tree_utils.in_update_precision(b, g) for b in buffers)
        dtype = real_precision(*wide, g)  # a tie (float16 g, bfloat16 moment): the moment's
        cast = {} if cast is None else cast
        if dtype not in cast:
            cast[dtype] = cast_scalars(scalars, dtype)
        s = cast[dtype]
        g_wide = tree_utils.widen(g, jnp.zeros((), dtype))
        if self.needs_params:
            u, new = self.element(s, g_wide, *wide, p=p)
        else:
            u, new = self.element(s, g_wide, *wide)
        new = tuple(n.astype(jnp.result_type(b)) for n, b in zip(new, buffers, strict=True))
        return u.astype(jnp.result_type(g)), new

    def update(self, updates, state, params=None, **extra_args):
        if self.needs_params:
            require_params(params, type(self).__name__)
        scalars, t = self.scalars_at(state)
        fields = self.buffer_fields
        buffers = tuple(getattr(state, f) for f in fields)
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        buffer_leaves = [treedef.flatten_up_to(b) for b in buffers]
        param_leaves = (treedef.flatten_up_to(params) if self.needs_params
                        else [None] * len(leaves))
        mask = self.leaf_mask(params)
        applies = [True] * len(leaves) if mask is None else treedef.flatten_up_to(mask)
        out, new_buffers = [], [[] for _ in fields]
        cast: dict = {}  # the scalars cast once per leaf precision, not once per leaf
        for i, g in enumerate(leaves):
            old = tuple(b[i] for b in buffer_leaves)
            if applies[i]:
                u, new = self.leaf_update(scalars, g, old, param_leaves[i], cast=cast)
            else:
                u, new = g, old
            out.append(u)
            for j, n in enumerate(new):
                new_buffers[j].append(n)
        new_state = [treedef.unflatten(b) for b in new_buffers]
        if self.counts_steps:
            new_state = [t, *new_state]
        return treedef.unflatten(out), self.state_type(*new_state)
