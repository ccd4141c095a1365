"""Composing transformations: `chain` runs them in sequence, each with its own state.

`named_chain` is a chain whose states are keyed by name; `get_state` finds the state of an
inner transformation of a chain (or of any combinator) by name or path.
"""

from __future__ import annotations

import jax

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, static
from gradxform._src.protocol.transformation import OptState, Transformation, require_transformation


def _keys(transforms) -> list[str]:
    """The name of each transformation: its type's, with `_1`, `_2`, ... for repeats."""
    keys: list[str] = []
    for t in transforms:
        name, key, k = type(t).__name__, type(t).__name__, 1
        while key in keys:
            key, k = f"{name}_{k}", k + 1
        keys.append(key)
    return keys


@pytree_dataclass
class chain(Transformation):
    """Applies transformations in sequence: the updates of one are the input of the next.

    `chain(a, b).update(g, (sa, sb))` returns `b(a(g))`; the state is the tuple of the inner
    states, in order. Adam is `chain(scale_by_adam(), scale_by_learning_rate(lr))`.

    Args:
      *transforms: the transformations, applied left to right.
    """

    transforms: tuple = child()

    def __init__(self, *transforms: Transformation):
        for i, t in enumerate(transforms):
            require_transformation(t, "chain", f"argument {i}")
        object.__setattr__(self, "transforms", tuple(transforms))
        self.__post_init__()

    def init(self, params):
        return tuple(t.init(params) for t in self.transforms)

    def update(self, updates, state, params=None, **extra_args):
        new_state = []
        for t, s in zip(self.transforms, state, strict=True):
            updates, s = t.update(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    def hyperparams(self, state) -> dict:
        """Each member's hyperparameters under its type's name (repeats: `scale_1`, ...). A chain
        inside a chain is read as its members, named by what they are: `chain(clip, adamw)`
        gives `clip_by_global_norm`, `scale_by_adam`, ..., not a key `chain`."""
        members = self._flat_members(state)
        return {key: t.hyperparams(s) for key, (t, s) in zip(_keys(t for t, _ in members),
                                                             members, strict=True)
                if hasattr(t, "hyperparams")}

    def _flat_members(self, state) -> list:
        out: list = []
        for t, s in zip(self.transforms, state, strict=True):
            out += t._flat_members(s) if type(t) is chain else [(t, s)]
        return out

    def _substates(self, state):
        """(key, transformation, state) per member; the key is the type's name, with `_1`,
        `_2`, ... for repeats (`scale_by_adam`, `scale_by_adam_1`)."""
        return list(zip(_keys(self.transforms), self.transforms, state, strict=True))

    def _repr_parts(self):
        return [("", t) for t in self.transforms]


def hyperparams(transformation: Transformation, state: OptState) -> dict:
    """The current value of every numeric hyperparameter, as a nested dict keyed by name.

    Scheduled hyperparameters are evaluated at the step count held in the state, the value the
    next `update` uses. Works inside jit (the values are arrays) and outside.

    Example: `hyperparams(adamw(1e-3), state)["scale_by_learning_rate"]["learning_rate"]`.
    """
    return transformation.hyperparams(state)


# -- named_chain and state lookup ----------------------------------------------------------------


@pytree_dataclass
class named_chain(Transformation):
    """`chain` whose inner states are a dict keyed by name: `state["adam"].mu`.

        named_chain(("clip", clip_by_global_norm(1.0)), ("adam", scale_by_adam()), ...)

    applies the transformations in order, like `chain`.

    Args:
      *named_transforms: (name, transformation) pairs with distinct string names.

    Returns:
      A transformation whose state is `{name: state}`.
    """

    transforms: tuple = child()
    names: tuple = static()

    def __init__(self, *named_transforms: tuple[str, Transformation]):
        names = []
        for i, pair in enumerate(named_transforms):
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise TypeError(
                    f"named_chain: argument {i} is {pair!r}; pass (name, transformation) pairs"
                )
            require_transformation(pair[1], "named_chain", f"the transformation named {pair[0]!r}")
            names.append(pair[0])
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"named_chain: names must be distinct; {duplicates} repeat")
        object.__setattr__(self, "transforms", tuple(t for _, t in named_transforms))
        object.__setattr__(self, "names", tuple(names))
        self.__post_init__()

    def init(self, params):
        return {name: t.init(params) for name, t in zip(self.names, self.transforms)}

    def update(self, updates, state, params=None, **extra_args):
        new_state = {}
        for name, t in zip(self.names, self.transforms):
            updates, new_state[name] = t.update(updates, state[name], params, **extra_args)
        return updates, new_state

    def hyperparams(self, state) -> dict:
        return {name: t.hyperparams(state[name]) for name, t in zip(self.names, self.transforms)}

    def _substates(self, state):
        return [(name, t, state[name]) for name, t in zip(self.names, self.transforms)]

    def _repr_parts(self):
        return [("", (n, t)) for n, t in zip(self.names, self.transforms)]


def _children(transformation, state) -> list:
    """(key, transformation, state) for each transformation directly inside `transformation`."""
    substates = getattr(transformation, "_substates", None)
    return [] if substates is None else list(substates(state))


def _walk(transformation, state, prefix=()):
    for key, t, s in _children(transformation, state):
        yield prefix + (key,), t, s
        yield from _walk(t, s, prefix + (key,))


def _is_subsequence(short, long) -> bool:
    it = iter(long)
    return all(any(x == y for y in it) for x in short)


def get_state(transformation: Transformation, state: OptState, name: str) -> OptState:
    """The state of the transformation called `name` inside `transformation`.

    Inner transformations are named by their type (`scale_by_adam`; repeats in a chain become
    `scale_by_adam_1`, ...), by their name in a `named_chain`, by their label in a `partition`.
    `name` may be a path through them, `"head/scale_by_adam"`; a path whose levels appear in
    order (not necessarily adjacent) in exactly one place is enough. Works for plain `chain`
    states too:

        get_state(adamw(1e-3), state, "scale_by_adam").mu       # instead of state[0].mu

    A combinator exposes its inner transformations with `_substates(state)`, a list of
    (key, transformation, state).

    Args:
      transformation: the optimizer that made `state`.
      state: its state.
      name: a type name, a name, a label, or a path of them joined by '/'.

    Returns:
      The inner state (a NamedTuple such as `ScaleByAdamState`).
    """
    nodes = list(_walk(transformation, state))
    query = tuple(str(name).strip("/").split("/"))
    for path, _, s in nodes:
        if path == query:
            return s
    hits = [(path, s) for path, _, s in nodes
            if path[-1] == query[-1] and _is_subsequence(query[:-1], path[:-1])]
    if len(hits) == 1:
        return hits[0][1]
    available = ", ".join(repr("/".join(p)) for p, _, _ in nodes) or "none"
    if not hits:
        raise LookupError(
            f"get_state: no inner transformation '{name}' in {type(transformation).__name__}; "
            f"the inner states are: {available}"
        )
    raise LookupError(
        f"get_state: '{name}' matches {len(hits)} inner states "
        f"({', '.join(repr('/'.join(p)) for p, _ in hits)}); pass one of these paths"
    )


def find_states(state, state_type, where: str):
    """The one instance of `state_type` inside `state` (any nesting), or a helpful error."""
    found = [x for x in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(
        x, state_type)) if isinstance(x, state_type)]
    if len(found) != 1:
        raise LookupError(
            f"{where}: the state holds {len(found)} {state_type.__name__}; expected exactly one. "
            f"With several, pick one with get_state(optimizer, state, name)."
        )
    return found[0]
