"""Combinators: transformations applied to part of the params, and per-group optimizers.

A combinator shows an inner transformation only its own leaves: the others are None in the
updates, params and state it sees (None is an empty subtree, so `jax.tree.map` skips it). That
is why masks nest: an inner mask may be finer than an outer one, and where the outer one has
already hidden a subtree the inner mask's entries for it are ignored.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax

from gradxform._src.primitives.scaling import set_to_zero
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, static
from gradxform._src.protocol.masks import (
    MaskLike,
    StaticMask,
    StaticValue,
    broadcast_mask,
    concrete_mask,
    mask_bool,
    path_segments,
    prefix_values,
)
from gradxform._src.protocol.transformation import Transformation

_is_none = tree_utils.is_none


def _flatten(tree):
    """Leaves of `tree` with None leaves kept in place, and the structure to rebuild it."""
    return jax.tree_util.tree_flatten(tree, is_leaf=_is_none)


def _select(leaves, keep, treedef):
    """The tree with the leaves where `keep` is true and None elsewhere."""
    return jax.tree_util.tree_unflatten(
        treedef, [x if k else None for x, k in zip(leaves, keep, strict=True)]
    )


def _restrict_extra_args(extra_args: dict, treedef, keep, enabled: bool) -> dict:
    """The extra arguments of `update` with those shaped like the updates restricted to the
    leaves where `keep` is true (optax's `mask_compatible_extra_args`); the others unchanged."""
    if not enabled:
        return extra_args
    out = {}
    for name, value in extra_args.items():
        leaves, tree = _flatten(value)
        out[name] = _select(leaves, keep, treedef) if tree == treedef else value
    return out


# -- masked ---------------------------------------------------------------------------------------


def _mask_values(mask: StaticMask, tree, where: str) -> list:
    """The mask as one Python bool per leaf of `tree` (None for None leaves)."""
    value = concrete_mask(mask.value(tree) if callable(mask.value) else mask.value, where)
    full = broadcast_mask(value, tree, where)
    return [None if m is None else bool(m) for m in _flatten(full)[0]]


class MaskedState(NamedTuple):
    """The inner transformation's state, with None for the leaves the mask leaves out."""

    inner_state: Any


@pytree_dataclass(positional=2)
class masked(Transformation):
    """Applies `inner` to the leaves selected by a mask; the other updates pass through unchanged.

        u_i = inner(g)_i   where mask_i,      u_i = g_i   elsewhere

    The inner transformation sees (and keeps state for) only the selected leaves; the others
    are None in its updates, params and state. Masks nest: `masked(masked(t, inner_mask),
    outer_mask)` applies t where both are true, and `inner_mask` may be finer than `outer_mask`.

    Args:
      inner: the transformation to apply.
      mask: a tree of Python bools with the structure of params or a prefix of it (a bool for
        a whole subtree), or a function of the params (or updates) that returns one. True: the
        leaf goes through `inner`.
      mask_compatible_extra_args: whether an extra argument of `update` with the structure of
        the updates (per-parameter tags, say) is restricted by the mask too, as the updates are.

    Returns:
      A transformation with state `MaskedState(inner_state)`.
    """

    inner: Transformation = child()
    mask: Any = static()
    mask_compatible_extra_args: bool = static(False)

    def __post_init__(self):
        if self.mask is None:
            raise ValueError("masked: mask is None; give a tree of bools or a function of params")
        if not isinstance(self.mask, StaticMask):
            object.__setattr__(self, "mask", StaticMask(self.mask))
        super().__post_init__()

    def init(self, params):
        leaves, treedef = _flatten(params)
        keep = _mask_values(self.mask, params, "masked")
        return MaskedState(inner_state=self.inner.init(_select(leaves, keep, treedef)))

    def update(self, updates, state, params=None, **extra_args):
        leaves, treedef = _flatten(updates)
        keep = _mask_values(self.mask, updates, "masked")
        inner_params = None if params is None else _select(_flatten(params)[0], keep, treedef)
        extra_args = _restrict_extra_args(extra_args, treedef, keep,
                                          self.mask_compatible_extra_args)
        out, inner_state = self.inner.update(
            _select(leaves, keep, treedef), state.inner_state, inner_params, **extra_args
        )
        out = [o if k else g for o, g, k in zip(_flatten(out)[0], leaves, keep, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, out), MaskedState(inner_state=inner_state)

    def hyperparams(self, state) -> dict:
        return self.inner.hyperparams(state.inner_state)

    def _substates(self, state):
        return [(type(self.inner).__name__, self.inner, state.inner_state)]


def freeze(mask: MaskLike) -> masked:
    """Zeroes the updates of the leaves selected by `mask`: u_i = 0 where mask_i, else g_i.

    `chain(freeze(mask), adamw(...))` keeps Adam's moments and the weight decay for the frozen
    leaves (weight decay still moves them). To leave params untouched and keep no optimizer
    state for them, give them their own group: `partition({"train": adamw(...), "frozen":
    set_to_zero()}, labels)`.

    Args:
      mask: as in `masked`; True freezes the leaf.

    Returns:
      `masked(set_to_zero(), mask)`.
    """
    return masked(set_to_zero(), mask)


def selective_transform(optimizer: Transformation, *, freeze_mask: MaskLike) -> partition:
    """Runs `optimizer` on the leaves not frozen by `freeze_mask`; frozen leaves get u = 0 and
    no optimizer state (unlike `freeze`, whose inner chain still keeps theirs).

    Args:
      optimizer: the transformation for the trained leaves.
      freeze_mask: True (freeze everything), False (nothing), or a tree of bools like the
        params (or a prefix of it): True freezes the leaf. Static: fixed for the run.

    Returns:
      `partition({"train": optimizer, "freeze": set_to_zero()}, labels)`.

    References:
      optax.transforms.selective_transform, whose arguments this keeps.
    """
    def label(path, m):
        return "freeze" if mask_bool(m, "selective_transform: freeze_mask",
                                     tree_utils.path_str(path)) else "train"

    return partition({"train": optimizer, "freeze": set_to_zero()},
                     jax.tree_util.tree_map_with_path(label, freeze_mask))


# -- partition ------------------------------------------------------------------------------------


def _is_patterns(value) -> bool:
    """A dict of path patterns (`{"encoder/**": "frozen"}`) rather than a tree of labels."""
    return (
        type(value) is dict and bool(value)
        and all(isinstance(k, str) for k in value)
        and not any(isinstance(v, dict | list | tuple) for v in value.values())
        and any(c in k for k in value for c in "/*?[")
    )


def _match_prefix(pattern: tuple[str, ...], segs: tuple[str, ...]) -> bool:
    """Whether `pattern` matches `segs` or a prefix of it ('*' in a segment, '**' for any)."""
    if not pattern:
        return True
    if pattern[0] == "**":
        return any(_match_prefix(pattern[1:], segs[i:]) for i in range(len(segs) + 1))
    return bool(segs) and fnmatch.fnmatchcase(segs[0], pattern[0]) and _match_prefix(
        pattern[1:], segs[1:]
    )


def _segment_covers(a: str, b: str) -> bool:
    """Whether glob segment `a` matches every segment that glob segment `b` matches (sure
    answers only: False where it cannot tell)."""
    return a == b or a == "*" or (not any(c in b for c in "*?[") and fnmatch.fnmatchcase(b, a))


def _covers(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether pattern `a` matches (a prefix of) every path that pattern `b` matches."""
    if not a:
        return True                  # a matched a prefix: everything under it is matched
    if a[0] == "**":
        return any(_covers(a[1:], b[i:]) for i in range(len(b) + 1))
    if not b or b[0] == "**":
        return False                 # b matches paths that a's next segment need not match
    return _segment_covers(a[0], b[0]) and _covers(a[1:], b[1:])


def _split(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.strip("/").split("/"))


def _shadowed_message(where: str, patterns: dict, late: str, early: str, verdict: str,
                      why: str) -> str:
    return (
        f"{where}: pattern {late!r} (label {patterns[late]!r}) {verdict}: "
        f"the earlier pattern {early!r} (label {patterns[early]!r}) {why}. The first "
        f"matching pattern wins; put {late!r} before {early!r} (specific patterns first, "
        f"'**' last)"
    )


def check_shadowing(patterns: dict, where: str) -> None:
    """Raises a ValueError when a pattern matches only paths that an earlier one matches."""
    split = [(p, _split(p)) for p in patterns]
    for j, (late, b) in enumerate(split):
        for early, a in split[:j]:
            if _covers(a, b):
                raise ValueError(_shadowed_message(
                    where, patterns, late, early, "can never be the first match",
                    "matches every path that it matches"))


def _pattern_labels(patterns: dict, tree, where: str) -> list:
    check_shadowing(patterns, where)
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
    compiled = [(p, _split(p), label) for p, label in patterns.items()]
    first: dict[str, str] = {}      # pattern -> the first pattern of a param it matches
    winners: set[str] = set()
    used: set[str] = set()
    labels: list = []
    for path, leaf in leaves:
        segs = path_segments(path)
        hits = [(p, label) for p, pat, label in compiled if _match_prefix(pat, segs)]
        used.update(p for p, _ in hits)
        if leaf is not None and hits:
            winners.add(hits[0][0])
            for p, _ in hits[1:]:
                first.setdefault(p, hits[0][0])
        if leaf is None:
            labels.append(None)
        elif hits:
            labels.append(hits[0][1])
        else:
            raise ValueError(
                f"{where}: param '{'/'.join(segs)}' matches none of the patterns "
                f"{list(patterns)}; add a pattern for it (a last '**' catches everything else)"
            )
    unused = [p for p in patterns if p not in used]
    if unused:
        example = "/".join(path_segments(leaves[0][0])) if leaves else "<no params>"
        raise ValueError(
            f"{where}: pattern '{unused[0]}' matches no param (param paths look like "
            f"'{example}'; '*' matches within one level, '**' any number of levels)"
        )
    for p in patterns:
        if p in first and p not in winners:
            raise ValueError(_shadowed_message(
                where, patterns, p, first[p], "is the first match of no param",
                "comes first for every param that it matches"))
    return labels


class _StaticLabels(StaticValue):
    """Labels held as static (hashable) data: a tree of labels, path patterns or a callable."""

    __slots__ = ()

    def __init__(self, value):
        if callable(value):
            key: tuple = ("callable", value)
        elif _is_patterns(value):
            check_shadowing(value, "partition")
            key = ("patterns", tuple(value.items()))
        else:
            key = self.tree_key(value)
        super().__init__(value, key)

    def resolve(self, tree, where: str) -> list:
        """One label per leaf of `tree` (None for None leaves)."""
        value = self.value(tree) if callable(self.value) else self.value
        if _is_patterns(value):
            return _pattern_labels(value, tree, where)
        return prefix_values(value, tree, where, "labels")


class PartitionState(NamedTuple):
    """One inner state per label; each holds None for the leaves of the other groups."""

    inner_states: Any


@pytree_dataclass(positional=2)
class partition(Transformation):
    """Applies a different transformation to each group of params (torch's param groups).

        u_i = transforms[label_i](g restricted to the leaves labelled label_i)_i

    Each transformation sees, and keeps state for, only the leaves of its group (the others are
    None). Fine-tuning with a low learning rate for a pretrained body, a higher one for a new
    head and frozen embeddings reads:

        partition(
            {"body": adamw(1e-5), "head": adamw(1e-3), "frozen": set_to_zero()},
            {"embed/**": "frozen", "encoder/**": "body", "head/**": "head"},
        )

    Args:
      transforms: a mapping from label to transformation.
      param_labels: the label of every leaf, as one of
        - a tree of labels with the structure of params or a prefix of it;
        - a dict of path patterns to labels, e.g. `{"encoder/**": "body", "head/*": "head"}`.
          Paths read like `layer1/w`; '*' matches within one level, '**' across levels, and a
          pattern that matches a path also labels everything under it. The first matching
          pattern wins, so put specific patterns before general ones and '**' last; a pattern
          that can never be the first match (`{"**": "a", "head/*": "b"}`), or is the first
          match of no param, is refused, naming it and the earlier pattern that takes its
          params;
        - a function of the params (or updates) returning either of the above.
      mask_compatible_extra_args: whether an extra argument of `update` with the structure of
        the updates is restricted to each group's leaves too, as the updates are.

    Returns:
      A transformation with state `PartitionState(inner_states={label: state})`.

    References:
      optax.partition (formerly optax.multi_transform).
    """

    transforms: Any = child()
    param_labels: Any = static()
    mask_compatible_extra_args: bool = static(False)

    def __post_init__(self):
        if not isinstance(self.transforms, Mapping) or not self.transforms:
            raise TypeError(
                f"partition: transforms must be a non-empty mapping from label to "
                f"transformation, got {self.transforms!r}"
            )
        object.__setattr__(self, "transforms", dict(self.transforms))
        if not isinstance(self.param_labels, _StaticLabels):
            object.__setattr__(self, "param_labels", _StaticLabels(self.param_labels))
        super().__post_init__()

    def _labels(self, tree) -> list:
        labels = self.param_labels.resolve(tree, "partition")
        paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
        for label, (path, leaf) in zip(labels, paths, strict=True):
            if leaf is not None and label not in self.transforms:
                raise ValueError(
                    f"partition: label {label!r} (of param '{tree_utils.path_str(path)}') has no "
                    f"transformation; transforms has labels {list(self.transforms)}. Add "
                    f"{label!r} to transforms or change the label."
                )
        return labels

    def init(self, params):
        leaves, treedef = _flatten(params)
        labels = self._labels(params)
        return PartitionState(inner_states={
            group: t.init(_select(leaves, [lab == group for lab in labels], treedef))
            for group, t in self.transforms.items()
        })

    def update(self, updates, state, params=None, **extra_args):
        leaves, treedef = _flatten(updates)
        p_leaves = None if params is None else _flatten(params)[0]
        labels = self._labels(updates)
        out, new_states = list(leaves), {}
        for group, t in self.transforms.items():
            keep = [lab == group for lab in labels]
            group_params = None if p_leaves is None else _select(p_leaves, keep, treedef)
            group_extra = _restrict_extra_args(extra_args, treedef, keep,
                                               self.mask_compatible_extra_args)
            group_out, new_states[group] = t.update(
                _select(leaves, keep, treedef), state.inner_states[group], group_params,
                **group_extra,
            )
            for i, o in enumerate(_flatten(group_out)[0]):
                if keep[i]:
                    out[i] = o
        return jax.tree_util.tree_unflatten(treedef, out), PartitionState(inner_states=new_states)

    def hyperparams(self, state) -> dict:
        return {
            group: t.hyperparams(state.inner_states[group]) for group, t in self.transforms.items()
        }

    def _substates(self, state):
        return [(str(group), t, state.inner_states[group]) for group, t in self.transforms.items()]
