"""Adadelta and Rprop as optimizers, with optax's arguments and numbers and torch's forms."""

from __future__ import annotations

from gradxform._src.composition.combine import chain
from gradxform._src.primitives.scaling import add_decayed_weights, scale, scale_by_learning_rate
from gradxform._src.primitives.step_adaptation import scale_by_adadelta, scale_by_rprop
from gradxform._src.protocol.masks import MaskLike
from gradxform._src.protocol.schedule import ScalarOrSchedule


def adadelta(learning_rate: ScalarOrSchedule | None = None, rho: float = 0.9,
             eps: float = 1e-6, weight_decay: ScalarOrSchedule = 0.0,
             weight_decay_mask: MaskLike = None) -> chain:
    """Adadelta (Zeiler, 2012) with coupled L2 weight decay.

    chain(add_decayed_weights(weight_decay, weight_decay_mask), scale_by_adadelta(rho, eps),
          scale_by_learning_rate(learning_rate))

    θ_t = θ_{t-1} - η Δθ_t, Δθ_t of `scale_by_adadelta` taken on g_t + λ θ_{t-1}: torch's
    Adadelta(lr, rho, eps, weight_decay) with the same numbers (torch's lr defaults to 1.0).
    `learning_rate=None` is η = 1, the paper's rule, which has no learning rate. optax 0.2.8's
    `adadelta(learning_rate=None)` instead leaves out the scaling and its sign, and so climbs the
    loss; with a learning rate given, optax's numbers and these are the same.
    """
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )


def rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
          min_step_size: float = 1e-6, max_step_size: float = 50.0, *,
          convention: str = "optax") -> chain:
    """Rprop: chain(scale_by_rprop(...), scale(-1.0)), as optax's `rprop`.

    torch.optim.Rprop(lr, etas=(η⁻, η⁺), step_sizes=(Δ_min, Δ_max)) is `rprop(lr, η⁻, η⁺, Δ_min,
    Δ_max, convention="torch")`; the default, "optax", gives optax's numbers (see
    `scale_by_rprop` for how the two differ).
    """
    return chain(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size,
                       convention=convention),
        scale(-1.0),
    )
