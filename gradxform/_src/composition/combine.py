"""Composing transformations: `chain` runs them in sequence, each with its own state."""

from __future__ import annotations

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child
from gradxform._src.protocol.transformation import OptState, Transformation


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
            if not (hasattr(t, "init") and hasattr(t, "update")):
                raise TypeError(
                    f"chain: argument {i} is {t!r}, not a transformation (an object with "
                    f"init and update)"
                )
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
        out = {}
        for t, s in zip(self.transforms, state, strict=True):
            name = type(t).__name__
            key, k = name, 1
            while key in out:
                key, k = f"{name}_{k}", k + 1
            if hasattr(t, "hyperparams"):
                out[key] = t.hyperparams(s)
        return out

    def __repr__(self) -> str:
        return f"chain({', '.join(repr(t) for t in self.transforms)})"


def hyperparams(transformation: Transformation, state: OptState) -> dict:
    """The current value of every numeric hyperparameter, as a nested dict keyed by name.

    Scheduled hyperparameters are evaluated at the step count held in the state, the value the
    next `update` uses. Works inside jit (the values are arrays) and outside.

    Example: `hyperparams(adamw(1e-3), state)["scale_by_learning_rate"]["learning_rate"]`.
    """
    return transformation.hyperparams(state)
