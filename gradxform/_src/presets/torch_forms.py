"""torch.optim's optimizers that optax lacks (ASGD) or writes otherwise (Adafactor), as chains."""

from __future__ import annotations

from gradxform._src.composition.combine import chain
from gradxform._src.composition.iterate_averaging import polyak_averaging
from gradxform._src.primitives.scaling import add_decayed_weights, scale_by_learning_rate
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import non_negative
from gradxform._src.schedules.common import ScheduleBase, as_float, value


@pytree_dataclass
class asgd_step_size(ScheduleBase):
    """ASGD's decaying step, η_t = η_0 / (1 + λ η_0 t)^α (t = 0, 1, ...; torch.optim.ASGD)."""

    learning_rate: float = value(check=non_negative)
    lambd: float = value(1e-4, check=non_negative)
    alpha: float = value(0.75, check=non_negative)

    def __call__(self, count):
        t = as_float(count)
        return self.learning_rate / (1 + self.lambd * self.learning_rate * t) ** self.alpha


def asgd(learning_rate: float = 1e-2, *, lambd: float = 1e-4, alpha: float = 0.75,
         t0: float = 1e6, weight_decay: float = 0.0) -> chain:
    """Averaged SGD (torch.optim.ASGD): SGD with a decaying step, and the average of its
    iterates from step t0 on kept in the state.

        η_t = η_0 / (1 + λ η_0 t)^α
        θ_t = θ_{t-1} (1 - λ η_t) - η_t (g_t + w θ_{t-1})
        θ̄_t = Polyak-Ruppert average of θ from step t0 on (`polyak_averaging`)

    chain(add_decayed_weights(weight_decay), add_decayed_weights(lambd),
          scale_by_learning_rate(asgd_step_size(learning_rate, lambd, alpha)),
          polyak_averaging(t0))

    λ both shrinks θ at every step and slows the step's decay; `averaged_params(state)` reads
    θ̄ (torch's `optimizer.state[p]["ax"]`). The arguments are torch's names and defaults.

    References:
      Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging", SIAM J.
      Control Optim. 1992.
      Bottou, "Stochastic Gradient Descent Tricks", Neural Networks: Tricks of the Trade, 2012.
    """
    return chain(
        add_decayed_weights(weight_decay),
        add_decayed_weights(lambd),
        scale_by_learning_rate(asgd_step_size(learning_rate, lambd=lambd, alpha=alpha)),
        polyak_averaging(t0),
    )
