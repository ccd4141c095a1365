"""Working with optax: an optax transformation inside a gradxform chain, and the other way round.

A gradxform transformation already has optax's `init(params)` and `update(updates, state,
params=None, **extra_args)`, so it can be given to `optax.chain`, `optax.MultiSteps`,
`flax.training.train_state.TrainState` or `flax.nnx.Optimizer` as it is. `to_optax` wraps it in
optax's own NamedTuple for code that checks `isinstance(tx, optax.GradientTransformation)`.
`from_optax` goes the other way (every gradxform combinator applies it to an optax
transformation it is given). optax is imported only when `to_optax` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradxform._src.protocol.transformation import (
    Transformation,
    from_optax,
    require_transformation,
)

if TYPE_CHECKING:
    import optax

__all__ = ["from_optax", "to_optax"]


def to_optax(transformation: Transformation) -> optax.GradientTransformationExtraArgs:
    """The transformation as an `optax.GradientTransformationExtraArgs` NamedTuple.

    Only needed where code checks `isinstance(tx, optax.GradientTransformation)`: everywhere
    else a gradxform transformation is accepted as it is. The NamedTuple holds the bound `init`
    and `update`, so its hyperparameters are fixed; pass the transformation itself to a jitted
    step to keep them as data.

    Args:
      transformation: a gradxform transformation.

    Returns:
      `optax.GradientTransformationExtraArgs(transformation.init, transformation.update)`.
    """
    import optax

    require_transformation(transformation, "to_optax", "transformation")
    return optax.GradientTransformationExtraArgs(transformation.init, transformation.update)
