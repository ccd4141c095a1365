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

What `restore` takes from the checkpoint and what from the code is said once, in its
docstring. orbax is imported when these functions are called.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import PytreeDataclass, format_value
from gradxform._src.protocol.transformation import is_transformation

_RECIPES_KEY = "gradxform_optimizers"
_OPTIONS_KEY = "gradxform_static_options"


def _recipes(tree) -> dict[str, str]:
    """The repr of every optimizer inside `tree`, by its path: what the checkpoint was made with."""
    out = {}
    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_transformation)[0]:
        if is_transformation(node):
            out[tree_utils.path_str(path)] = repr(node)
    return out


def _is_node(x) -> bool:
    return isinstance(x, PytreeDataclass)


def _node_options(node: PytreeDataclass, where: str, out: dict) -> None:
    """The static options of `node` and of the transformations and schedules inside it."""
    for name in node._static_fields:
        # A function's repr carries its address, which changes from run to run.
        text = re.sub(r" at 0x[0-9a-fA-F]+", "", format_value(getattr(node, name)))
        out[f"{where}.{name}"] = {"of": type(node).__name__, "value": text}
    for name in node._hyper_fields + node._child_fields:
        for path, sub in jax.tree_util.tree_flatten_with_path(getattr(node, name),
                                                              is_leaf=_is_node)[0]:
            if _is_node(sub):
                _node_options(sub, f"{where}/{name}{jax.tree_util.keystr(path)}", out)


def _static_options(tree) -> dict[str, dict[str, str]]:
    """Every static option of every optimizer inside `tree`, by a path naming where it is."""
    out: dict = {}
    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_node)[0]:
        if _is_node(node):
            _node_options(node, tree_utils.path_str(path), out)
    return out


def _changed_option(saved: dict, now: dict) -> str | None:
    for key, have in now.items():
        old = saved.get(key)
        if old is not None and old["value"] != have["value"]:
            name = key.rsplit(".", 1)[1]
            return (f"option {name} of {have['of']} (at '{key}') is {old['value']} in the "
                    f"checkpoint but {have['value']} in `like`")
    return None


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
            custom_metadata={_RECIPES_KEY: _recipes(tree), _OPTIONS_KEY: _static_options(tree)},
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


def restore(directory: str | os.PathLike, like: Any, *,
            allow_changed_options: bool = False) -> Any:
    """Restores a tree saved by `save` into the structure of `like`.

    `like` is the tree as the resumed run builds it: the same optimizer recipe (its values may
    differ; the saved ones are restored), and for states and params either arrays or
    `jax.ShapeDtypeStruct`s (`jax.eval_shape(opt.init, params)` allocates nothing).

    What comes from where:

    - from the checkpoint: every leaf. The params, every array of the optimizer states (moments,
      step counts), and the numeric hyperparameters of the optimizers: floats, arrays and the
      numbers of schedules (a learning rate changed mid-run comes back as it was when saved).
      Python numbers in `like` come back as Python numbers, so a rebuilt optimizer equals the
      saved one exactly.
    - from the code (`like`): the structure. Which transformations, in which order, and their
      static options (flags such as `nesterov`, dtypes, masks, labels, callables, and schedules
      written as Python functions); the types of the states (NamedTuples); the sharding of each
      array, where `like` has one. Shapes and dtypes must agree with the checkpoint.
    - static options must also agree: a checkpoint saved with `nesterov=False` restored into a
      recipe with `nesterov=True` would continue as another optimizer without a word, so it is
      refused unless `allow_changed_options=True` says the change is intended (then the code's
      options are used). The reprs of the options (callables by name) are compared; a
      checkpoint written before the options were recorded is not checked.

    Args:
      directory: a checkpoint written by `save`.
      like: a tree with the structure, shapes and dtypes to restore into.
      allow_changed_options: restore into optimizers whose static options differ from the
        saved ones (the code's options are used).

    Returns:
      The restored tree, with `like`'s structure (NamedTuple states, optimizers).

    Raises:
      ValueError: naming the first path where the checkpoint and `like` differ (a key one has
        and the other lacks, a shape, a dtype, a static option and both of its values), with
        the optimizers the checkpoint was saved with.
    """
    path = os.fspath(directory)
    with _checkpointer() as ckpt:
        metadata = ckpt.metadata(path)
        custom = getattr(metadata, "custom_metadata", None) or {}
        mismatch = _first_mismatch(_stored_tree(metadata), like)
        if mismatch is None and not allow_changed_options:
            mismatch = _changed_option(custom.get(_OPTIONS_KEY) or {}, _static_options(like))
            if mismatch is not None:
                mismatch += ("; pass allow_changed_options=True if the change is intended "
                             "(the code's options are then used)")
        if mismatch is not None:
            recipes = custom.get(_RECIPES_KEY) or {}
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
