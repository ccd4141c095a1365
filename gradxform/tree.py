"""`gradxform.tree_utils` without the `tree_` prefix, as `optax.tree` is to `optax.tree_utils`.

    from gradxform import tree
    tree.norm(grads), tree.get(state, "mu"), tree.add_scale(params, -0.1, grads)

`tree.sum`, `tree.max`, `tree.min` and `tree.set` shadow Python's builtins of those names inside
this module only (as in optax).
"""

from gradxform._src.trees.casting import tree_cast as cast
from gradxform._src.trees.casting import tree_cast_like as cast_like
from gradxform._src.trees.casting import tree_dtype as dtype
from gradxform._src.trees.casting import tree_random_like as random_like
from gradxform._src.trees.casting import tree_split_key_like as split_key_like
from gradxform._src.trees.casting import tree_unwrap_random_key_data as unwrap_random_key_data
from gradxform._src.trees.moment_updates import tree_bias_correction as bias_correction
from gradxform._src.trees.moment_updates import (
    tree_update_infinity_moment as update_infinity_moment,
)
from gradxform._src.trees.moment_updates import tree_update_moment as update_moment
from gradxform._src.trees.moment_updates import (
    tree_update_moment_per_elem_norm as update_moment_per_elem_norm,
)
from gradxform._src.trees.state_access import tree_get as get
from gradxform._src.trees.state_access import tree_get_all_with_path as get_all_with_path
from gradxform._src.trees.state_access import tree_set as set  # noqa: A004
from gradxform._src.trees.tree_math import tree_add as add
from gradxform._src.trees.tree_math import tree_add_scale as add_scale
from gradxform._src.trees.tree_math import tree_allclose as allclose
from gradxform._src.trees.tree_math import tree_batch_shape as batch_shape
from gradxform._src.trees.tree_math import tree_clip as clip
from gradxform._src.trees.tree_math import tree_conj as conj
from gradxform._src.trees.tree_math import tree_div as div
from gradxform._src.trees.tree_math import tree_full_like as full_like
from gradxform._src.trees.tree_math import tree_max as max  # noqa: A004
from gradxform._src.trees.tree_math import tree_min as min  # noqa: A004
from gradxform._src.trees.tree_math import tree_mul as mul
from gradxform._src.trees.tree_math import tree_norm as norm
from gradxform._src.trees.tree_math import tree_ones_like as ones_like
from gradxform._src.trees.tree_math import tree_real as real
from gradxform._src.trees.tree_math import tree_scale as scale
from gradxform._src.trees.tree_math import tree_size as size
from gradxform._src.trees.tree_math import tree_sub as sub
from gradxform._src.trees.tree_math import tree_sum as sum  # noqa: A004
from gradxform._src.trees.tree_math import tree_vdot as vdot
from gradxform._src.trees.tree_math import tree_where as where
from gradxform._src.trees.tree_math import tree_zeros_like as zeros_like

__all__ = [
    "add",
    "add_scale",
    "allclose",
    "batch_shape",
    "bias_correction",
    "cast",
    "cast_like",
    "clip",
    "conj",
    "div",
    "dtype",
    "full_like",
    "get",
    "get_all_with_path",
    "max",
    "min",
    "mul",
    "norm",
    "ones_like",
    "random_like",
    "real",
    "scale",
    "set",
    "size",
    "split_key_like",
    "sub",
    "sum",
    "unwrap_random_key_data",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "vdot",
    "where",
    "zeros_like",
]
