"""Utilities for pytrees (also as `gradxform.tree`, without the `tree_` prefix): optax.tree_utils.

The names, arguments and numbers of optax 0.2.8's `optax.tree_utils`, so code written against
optax runs with `from gradxform import tree_utils` in its place:

- arithmetic, leaf by leaf: `tree_add`, `tree_sub`, `tree_mul`, `tree_div`, `tree_scale`
  (scalar * x), `tree_add_scale` (x + scalar * y), `tree_conj`, `tree_real`, `tree_clip`,
  `tree_where`, `tree_batch_shape`;
- reductions over all elements: `tree_sum`, `tree_vdot`, `tree_norm(tree, ord, squared)`,
  `tree_max`, `tree_min`, `tree_size`, `tree_allclose`;
- new trees: `tree_zeros_like`, `tree_ones_like`, `tree_full_like`, `tree_random_like`,
  `tree_split_key_like`; dtypes: `tree_cast`, `tree_cast_like`, `tree_dtype`,
  `tree_unwrap_random_key_data`;
- optimizer states by name: `tree_get(state, "mu")`, `tree_set(state, count=0)`,
  `tree_get_all_with_path`, with the `NamedTupleKey` entries of their paths. Where a key matches
  several values (every transformation keeps a `count`), `tree_get` lists their paths; a path
  such as `"1/0/ScaleByAdamState.count"` or `"head/mu"` picks one. `tree_set` keeps the state's
  structure, shapes and dtypes;
- slow copies of the params: `incremental_update` (Polyak averaging) and `periodic_update`
  (also in `gradxform`, as in `optax`);
- moment updates: `tree_update_moment`, `tree_update_infinity_moment`,
  `tree_update_moment_per_elem_norm`, `tree_bias_correction`.

Trees combined with one another must have the same structure; where they do not, the error names
the first path that differs.
"""

from gradxform._src.trees.casting import (
    tree_cast,
    tree_cast_like,
    tree_dtype,
    tree_random_like,
    tree_split_key_like,
    tree_unwrap_random_key_data,
)
from gradxform._src.trees.moment_updates import (
    tree_bias_correction,
    tree_update_infinity_moment,
    tree_update_moment,
    tree_update_moment_per_elem_norm,
)
from gradxform._src.trees.state_access import (
    NamedTupleKey,
    tree_get,
    tree_get_all_with_path,
    tree_set,
)
from gradxform._src.trees.tree_math import (
    incremental_update,
    periodic_update,
    tree_add,
    tree_add_scale,
    tree_allclose,
    tree_batch_shape,
    tree_clip,
    tree_conj,
    tree_div,
    tree_full_like,
    tree_max,
    tree_min,
    tree_mul,
    tree_norm,
    tree_ones_like,
    tree_real,
    tree_scale,
    tree_size,
    tree_sub,
    tree_sum,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)

__all__ = [
    "NamedTupleKey",
    "incremental_update",
    "periodic_update",
    "tree_add",
    "tree_add_scale",
    "tree_allclose",
    "tree_batch_shape",
    "tree_bias_correction",
    "tree_cast",
    "tree_cast_like",
    "tree_clip",
    "tree_conj",
    "tree_div",
    "tree_dtype",
    "tree_full_like",
    "tree_get",
    "tree_get_all_with_path",
    "tree_max",
    "tree_min",
    "tree_mul",
    "tree_norm",
    "tree_ones_like",
    "tree_random_like",
    "tree_real",
    "tree_scale",
    "tree_set",
    "tree_size",
    "tree_split_key_like",
    "tree_sub",
    "tree_sum",
    "tree_unwrap_random_key_data",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
]
