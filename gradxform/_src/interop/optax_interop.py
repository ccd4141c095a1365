"""Working with optax: an optax transformation inside a gradxform chain, and the other way round.

A gradxform transformation already has optax's `init(params)` and `update(updates, state,
params=None, **extra_args)`, so it can be given to `optax.chain`, `optax.MultiSteps`,
`flax.training.train_state.TrainState` or `flax.nnx.Optimizer` as it is. `to_optax` wraps it in
optax's own NamedTuple for code that checks `isinstance(tx, optax.GradientTransformation)`.
`from_optax` goes the other way. optax is imported only when these are called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import static
from gradxform._src.protocol.transformation import Transformation, require_transformation

if TYPE_CHECKING:
    import optax


def _optax_name(tx) -> str:
    """`optax.adam` for the transformation built by `optax.adam(...)`, when that can be told."""
    qualname = getattr(getattr(tx, "init", None), "__qualname__", "")
    module = getattr(getattr(tx, "init", None), "__module__", "") or ""
    head = qualname.split(".<locals>")[0]
    if module.startswith("optax") and head and "<" not in head:
        return f"optax.{head}"
    return type(tx).__name__


@pytree_dataclass
class from_optax(Transformation):
    """An optax `GradientTransformation` used as a gradxform transformation.

        u_t, s_t = tx.update(g_t, s_{t-1}, θ_{t-1})        (optax's own rule, unchanged)

    Use it to put an optax transformation that gradxform lacks into a `chain`:
    `chain(from_optax(optax.scale_by_lbfgs()), scale_by_learning_rate(0.1))`. The state is
    optax's state, untouched. Extra keyword arguments of `update` (e.g. `value` for optax's line
    searches) reach `tx` when it accepts them.

    The optax transformation is static data: its hyperparameters are constants baked into its
    functions, so changing one builds a new `tx` and recompiles the step. To change them during
    training, build `tx` with `optax.inject_hyperparams`; `hyperparams(state)` then reads them
    from the state.

    Args:
      tx: an `optax.GradientTransformation` (any object with `init` and `update`).

    Returns:
      A transformation whose state is `tx`'s state.
    """

    tx: Any = static()

    def __post_init__(self):
        require_transformation(self.tx, "from_optax", "tx", "an optax.GradientTransformation")
        super().__post_init__()

    def init(self, params):
        return self.tx.init(params)

    def update(self, updates, state, params=None, **extra_args):
        import optax

        return optax.with_extra_args_support(self.tx).update(
            updates, state, params, **extra_args
        )

    def hyperparams(self, state) -> dict:
        """The values `optax.inject_hyperparams` keeps in the state (empty otherwise)."""
        return dict(getattr(state, "hyperparams", {}))

    def __repr__(self) -> str:
        return f"from_optax({_optax_name(self.tx)})"


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
