"""Reading and replacing parts of an optimizer state by name: `tree_get`, `tree_set`.

A key names a dict key, a NamedTuple's field or a NamedTuple's class, anywhere in the tree:
`tree_get(state, "mu")` is Adam's first moment however deep the chain holds it, and
`tree_get(state, "ScaleByAdamState")` the whole state of `scale_by_adam`. These are optax's
functions with optax's arguments and matches (a key optax finds, they find at the same paths, in
the same order), and two additions:

- a key may also be a path, `"1/0/ScaleByAdamState.count"`, in the form the error messages
  print: one entry per level (a dict key, a sequence index, or `Class.field` for a NamedTuple's
  field, where the class name or the field alone also matches). Its last entry is searched like
  a key; a path that names every level is taken as it is, a shorter one matches where its
  entries appear in that order along the path to the value (`"head/mu"` is the `mu` of the
  partition group `head`). Where a key matches several values, `tree_get`'s KeyError lists
  their paths (optax's prints the whole tree);
- `tree_set` replaces a value only by one of the same tree structure, shapes and dtypes (Python
  numbers are converted to the dtype they replace), so a replaced state still fits the
  optimizer and its compiled step.

`gradxform.get_state(optimizer, state, "scale_by_adam")` finds an inner state by the name of the
transformation instead.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.protocol import tree_utils

KeyPath = tuple[Any, ...]
Filtering = Callable[[KeyPath, Any], bool]


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """The entry of a path that goes through the field `name` of a NamedTuple `tuple_name`.

    `jax.tree_util.keystr(path)` prints it as `ScaleByAdamState.mu`. A `filtering` function can
    tell apart fields of the same name in different states by `entry.tuple_name`.
    """

    tuple_name: str
    name: str

    def __str__(self) -> str:
        return f"{self.tuple_name}.{self.name}"


class _KeyError(KeyError):
    """A KeyError (as optax raises) whose message prints as written, without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0])


class _Match(NamedTuple):
    path: KeyPath
    value: Any
    by_class: bool  # the value is a NamedTuple found by its class name (the path ends at it)


def _is_named_tuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _children(node) -> tuple[list[tuple[Any, Any]], Any] | None:
    """The direct children of a pytree node as (path entry, child), and the node's treedef to
    rebuild it from them; None for a leaf. NamedTuple fields get `NamedTupleKey` entries."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(flat) == 1 and flat[0][0] == () and flat[0][1] is node:
        return None
    if _is_named_tuple(node):
        name = type(node).__name__
        return [(NamedTupleKey(name, field), getattr(node, field)) for field in node._fields], \
            treedef
    return [(path[0], child) for path, child in flat], treedef


def _holds(node, key) -> bool:
    """Whether `node` is a NamedTuple with field or class name `key`, or a dict with key `key`."""
    if _is_named_tuple(node):
        return key in node._fields or type(node).__name__ == key
    if isinstance(node, dict):
        try:
            return key in node
        except TypeError:  # an unhashable key
            return False
    return False


def _outermost_holders(node, key, path: KeyPath):
    if _holds(node, key):
        yield path, node
        return
    children = _children(node)
    for entry, child in children[0] if children else ():
        yield from _outermost_holders(child, key, (*path, entry))


def _search(tree, key, path: KeyPath = ()) -> list[_Match]:
    """optax's search: the values under `key` in the outermost nodes that hold it, in the order of
    the tree, then (recursively) those inside each of these nodes."""
    holders = list(_outermost_holders(tree, key, path))
    found = []
    for hpath, node in holders:
        if _is_named_tuple(node) and type(node).__name__ == key:
            found.append(_Match(hpath, node, True))
        elif _is_named_tuple(node):
            found.append(_Match((*hpath, NamedTupleKey(type(node).__name__, key)),
                                getattr(node, key), False))
        else:
            found.append(_Match((*hpath, jax.tree_util.DictKey(key)), node[key], False))
    for hpath, node in holders:
        children = _children(node)
        for entry, child in children[0] if children else ():
            found += _search(child, key, (*hpath, entry))
    return found


def _entry_matches(segment: str, entry) -> bool:
    if segment == tree_utils.path_str((entry,)):
        return True
    return isinstance(entry, NamedTupleKey) and segment in (entry.name, entry.tuple_name)


def _is_subsequence(segments, entries) -> bool:
    it = iter(entries)
    return all(any(_entry_matches(s, e) for e in it) for s in segments)


def _search_path(tree, query: str) -> list[_Match]:
    """The values at a path such as "1/0/ScaleByAdamState.count" or "head/mu"."""
    segments = [s for s in query.split("/") if s]
    if not segments:
        return []
    *prefix, last = segments
    hits = _search(tree, last)
    if not hits and "." in last:
        tuple_name, _, field = last.rpartition(".")
        hits = [m for m in _search(tree, field)
                if not m.by_class and isinstance(m.path[-1], NamedTupleKey)
                and m.path[-1].tuple_name == tuple_name]

    def above(m: _Match) -> KeyPath:
        return m.path if m.by_class else m.path[:-1]

    exact = [m for m in hits if len(above(m)) == len(prefix)
             and all(_entry_matches(s, e) for s, e in zip(prefix, above(m)))]
    return exact or [m for m in hits if _is_subsequence(prefix, above(m))]


def _find(tree, key, filtering: Filtering | None) -> list[_Match]:
    found = _search(tree, key)
    if not found and isinstance(key, str) and ("/" in key or "." in key):
        found = _search_path(tree, key)
    if filtering is not None:
        found = [m for m in found if filtering(m.path, m.value)]
    return found


def _label(path: KeyPath) -> str:
    return tree_utils.path_str(path)


def _names(tree, limit: int = 30) -> str:
    """The keys, fields and NamedTuple class names in `tree`, for a message about a missing key."""
    names: dict[str, None] = {}

    def visit(node):
        if _is_named_tuple(node):
            names[type(node).__name__] = None
            names.update(dict.fromkeys(node._fields))
        elif isinstance(node, dict):
            names.update(dict.fromkeys(str(k) for k in node))
        children = _children(node)
        for _, child in children[0] if children else ():
            visit(child)

    visit(tree)
    shown = list(names)[:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(repr(n) for n in shown) + more) or "none"


def tree_get_all_with_path(tree: Any, key: Any,
                           filtering: Filtering | None = None) -> list[tuple[KeyPath, Any]]:
    """Every value in `tree` under `key`, with its path.

    Args:
      tree: a tree, e.g. an optimizer state.
      key: a dict key, a NamedTuple field or NamedTuple class name, or a path of them joined by
        "/" (see the module's description).
      filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.

    Returns:
      A list of (path, value); a path is a tuple of jax key entries (`DictKey`, `SequenceKey`,
      ...) and `NamedTupleKey`s, readable with `jax.tree_util.keystr`.
    """
    return [(m.path, m.value) for m in _find(tree, key, filtering)]


def tree_get(tree: Any, key: Any, default: Any = None,
             filtering: Filtering | None = None) -> Any:
    """The one value in `tree` under `key` (`default` when there is none).

        tree_get(state, "mu")                         # Adam's first moment
        tree_get(state, "1/0/ScaleByAdamState.count")  # one of several counts, by its path

    Args:
      tree: a tree, e.g. an optimizer state.
      key: a dict key, a NamedTuple field or NamedTuple class name, or a path of them joined by
        "/" (see the module's description).
      default: returned when nothing matches.
      filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.

    Returns:
      The value.

    Raises:
      KeyError: several values match; the message lists their paths, any of which can be passed
        as `key`.
    """
    found = _find(tree, key, filtering)
    if not found:
        return default
    if len(found) > 1:
        paths = [_label(m.path) for m in found]
        raise _KeyError(
            f"tree_get: found multiple values for {key!r}, at "
            f"{', '.join(repr(p) for p in paths)}; pass one of these paths as the key "
            f"(tree_get(tree, {paths[0]!r})), or pick one with filtering=lambda path, value: "
            f"... (path is a tuple of key entries; a NamedTuple field's entry is a NamedTupleKey "
            f"with .tuple_name and .name), or use tree_get_all_with_path to get them all")
    return found[0].value


def _fitted_leaf(new, old, key, where: str):
    """`new` checked (and, for a Python number, converted) to stand where `old` is."""
    if not hasattr(old, "dtype"):  # a Python object kept in the state: nothing to keep
        return new
    old_dtype = jnp.dtype(old.dtype)
    if isinstance(new, numbers.Number) and not hasattr(new, "dtype"):
        value = np.asarray(new)
        if (value.dtype.kind == "c" and old_dtype.kind != "c") or (
                old_dtype.kind in "iub" and np.asarray(new).astype(old_dtype) != value):
            raise TypeError(
                f"tree_set: {key!r} at '{where}' holds {old_dtype.name}, which cannot hold "
                f"{new!r}")
        new = jnp.asarray(new, dtype=old_dtype)
    if np.shape(new) != np.shape(old):
        raise ValueError(
            f"tree_set: {key!r} at '{where}' has shape {np.shape(old)}, the new value "
            f"{np.shape(new)}; give an array of that shape (tree_full_like(value, x) fills one)")
    new_dtype = jnp.dtype(new.dtype if hasattr(new, "dtype") else np.result_type(new))
    if new_dtype != old_dtype:
        raise TypeError(
            f"tree_set: {key!r} at '{where}' holds {old_dtype.name}, the new value "
            f"{new_dtype.name}; cast it (value.astype(jnp.{old_dtype.name})): another dtype "
            f"would change the optimizer's arithmetic and recompile its step")
    return new


def _fitted(new, old, key, path: KeyPath):
    """`new`, checked to have the structure, shapes and dtypes of `old`, the value it replaces."""
    where = _label(path)
    if jax.tree.structure(new) != jax.tree.structure(old):
        difference = tree_utils.first_difference_of_structures(
            old, new, "the value in the tree", "the new value")
        raise ValueError(
            f"tree_set: the new value for {key!r} must have the tree structure of the value it "
            f"replaces at '{where}'; {difference}")
    old_leaves = jax.tree_util.tree_leaves_with_path(old)
    fitted = [_fitted_leaf(n, o, key, tree_utils.path_str((*path, *p)))
              for (p, o), n in zip(old_leaves, jax.tree.leaves(new), strict=True)]
    return jax.tree.unflatten(jax.tree.structure(new), fitted)


def tree_set(tree: Any, filtering: Filtering | None = None, /, **kwargs: Any) -> Any:
    """A copy of `tree` with the values under each key of `kwargs` replaced.

        tree_set(state, count=0)                                   # every count
        tree_set(state, **{"head/mu": tree_zeros_like(tree_get(state, "head/mu"))})

    Every value the key matches is replaced (as in optax), by one of the same tree structure,
    shapes and dtypes; a Python number is converted to the dtype it replaces when it fits it.

    Args:
      tree: a tree, e.g. an optimizer state.
      filtering: `filtering(path, value) -> bool` keeps only the matches it accepts.
      **kwargs: key=new value; a key as in `tree_get` (a path: `**{"head/mu": ...}`).

    Returns:
      The new tree, of the same structure.

    Raises:
      KeyError: a key matches nothing.
      ValueError, TypeError: a new value's structure, shapes or dtypes differ from the value
        it replaces.
    """
    targets: dict[KeyPath, tuple[str, Any, Any]] = {}
    for key, new in kwargs.items():
        found = _find(tree, key, filtering)
        if not found:
            kept = " that the filtering function keeps" if filtering is not None else ""
            raise _KeyError(
                f"tree_set: found no value for {key!r}{kept}; the names in the tree are: "
                f"{_names(tree)}")
        targets.update({m.path: (key, new, m.value) for m in found})
    # A match inside another one is replaced with it (as in optax).
    outermost = [p for p in targets if not any(p[:i] in targets for i in range(len(p)))]
    replacements = {p: _fitted(targets[p][1], targets[p][2], targets[p][0], p)
                    for p in outermost}
    above = {path[:i] for path in replacements for i in range(len(path))}

    def rebuild(node, path: KeyPath):
        if path in replacements:
            return replacements[path]
        if path not in above:
            return node
        children, treedef = _children(node) or ((), None)
        new_children = [rebuild(child, (*path, entry)) for entry, child in children]
        if _is_named_tuple(node):
            return node._replace(**{e.name: c for (e, _), c in zip(children, new_children)})
        return jax.tree.unflatten(treedef, new_children)

    return rebuild(tree, ())
