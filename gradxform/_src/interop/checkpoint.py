"""Saving and restoring optimizer state, and the optimizer itself, with orbax-checkpoint.

An optimizer is data: its numeric hyperparameters are pytree leaves, so it is saved like the
state, next to it, and rebuilt from a recipe of the same structure (the code that built it) and
the saved values. A training run resumed from such a checkpoint takes bit for bit the same steps
as one never interrupted:

    from gradxform import checkpoint

    checkpoint.save(path, {"params": params, "opt_state": state, "optimizer": opt})
    ...
    like = {"params": params, "opt_state": jax.eval_shape(opt.init, params), "optimizer": opt}
    restored = checkpoint.restore(path, like)

orbax is imported when these functions are called.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.transformation import is_transformation

_RECIPES_KEY = "gradxform_optimizers"


def _recipes(tree) -> dict[str, str]:
    """The repr of every optimizer inside `tree`, by its path: what the checkpoint was made with."""
    out = {}
    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_transformation)[0]:
        if is_transformation(node):
            out[tree_utils.path_str(path)] = repr(node)
    return out


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save(directory: str | os.PathLike, tree: Any, *, force: bool = False) -> None:
    """Saves a tree of params, optimizer states and optimizers to `directory` with orbax.

    Optimizers in the tree are saved as their leaves (the hyperparameter values, Python floats
    at full precision) and their reprs, which `restore` quotes when the structure differs.
    Returns once the checkpoint is on disk.

    Args:
      directory: where to write; must not exist unless `force`.
      tree: any pytree, e.g. `{"params": ..., "opt_state": ..., "optimizer": ...}`.
      force: overwrite an existing checkpoint.
    """
    with _checkpointer() as ckpt:
        ckpt.save(
            os.fspath(directory), tree, force=force,
            custom_metadata={_RECIPES_KEY: _recipes(tree)},
        )
        ckpt.wait_until_finished()


def _stored_tree(metadata):
    """The tree of per-leaf metadata, across the orbax versions that wrap it differently."""
    item = getattr(metadata, "item_metadata", metadata)
    return getattr(item, "tree", item)


def _is_array_like(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def _as_stored(x):
    """How orbax stores a leaf like `x`: a typed PRNG key (a state's random key) as its data."""
    dtype = getattr(x, "dtype", None)
    if dtype is not None and jax.numpy.issubdtype(dtype, jax.dtypes.prng_key):
        return jax.eval_shape(jax.random.key_data, x)
    return x


def _first_mismatch(stored, like) -> str | None:
    """Where `like` and the checkpoint's tree first differ in keys, shapes or dtypes."""
    stored_leaves = tree_utils.leaves_by_path(stored)
    like_leaves = {k: _as_stored(v) for k, v in tree_utils.leaves_by_path(like).items()}
    missing = tree_utils.first_missing_path(like_leaves, stored_leaves, "`like`", "the checkpoint")
    if missing is not None:
        return missing
    for key, want in like_leaves.items():
        have = stored_leaves[key]
        have_shape = tuple(getattr(have, "shape", ()) or ())
        if tuple(np.shape(want)) != have_shape:
            return (f"'{key}' has shape {have_shape} in the checkpoint but {tuple(np.shape(want))} "
                    f"in `like`")
        have_dtype = getattr(have, "dtype", None)
        if _is_array_like(want) and have_dtype is not None and np.dtype(have_dtype) != want.dtype:
            return (f"'{key}' has dtype {np.dtype(have_dtype).name} in the checkpoint but "
                    f"{np.dtype(want.dtype).name} in `like`")
    return None


def restore(directory: str | os.PathLike, like: Any) -> Any:
    """Restores a tree saved by `save` into the structure of `like`.

    `like` is the tree as the resumed run builds it: the same optimizer recipe (its values may
    differ; the saved ones are restored), and for states and params either arrays or
    `jax.ShapeDtypeStruct`s (`jax.eval_shape(opt.init, params)` allocates nothing). Arrays are
    restored with the sharding of the matching leaf of `like` where it has one. Python numbers
    in `like` come back as Python numbers, so a rebuilt optimizer equals the saved one exactly.

    Args:
      directory: a checkpoint written by `save`.
      like: a tree with the structure, shapes and dtypes to restore into.

    Returns:
      The restored tree, with `like`'s structure (NamedTuple states, optimizers).

    Raises:
      ValueError: naming the first path where the checkpoint and `like` differ (a key one has
        and the other lacks, a shape, a dtype), with the optimizers the checkpoint was saved
        with.
    """
    path = os.fspath(directory)
    with _checkpointer() as ckpt:
        metadata = ckpt.metadata(path)
        mismatch = _first_mismatch(_stored_tree(metadata), like)
        if mismatch is not None:
            recipes = (getattr(metadata, "custom_metadata", None) or {}).get(_RECIPES_KEY) or {}
            saved = "".join(f"\n  {k}: {v}" for k, v in recipes.items())
            now = "".join(f"\n  {k}: {v}" for k, v in _recipes(like).items())
            raise ValueError(
                f"checkpoint.restore: the checkpoint at {path} does not match `like`: {mismatch}."
                + (f"\nSaved with:{saved}" if saved else "")
                + (f"\nRestoring into:{now}" if now else "")
                + "\nBuild `like` with the optimizer and params the checkpoint was saved with, "
                "or start the optimizer state afresh with init(params)."
            )
        return ckpt.restore(path, like)
