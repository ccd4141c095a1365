"""torch.optim's optimizers that optax lacks (ASGD) or writes otherwise (Adafactor), as chains."""

from __future__ import annotations

from gradxform._src.composition.combine import chain
from gradxform._src.composition.iterate_averaging import polyak_averaging
from gradxform._src.primitives.clipping import clip_by_block_rms
from gradxform._src.primitives.factored import scale_by_factored_rms, scale_by_param_block_rms
from gradxform._src.primitives.scaling import add_decayed_weights, scale, scale_by_learning_rate
from gradxform._src.schedules.torch_lr_scheduler import asgd_schedule, relative_step_schedule


def asgd(learning_rate: float = 1e-2, *, lambd: float = 1e-4, alpha: float = 0.75,
         t0: float = 1e6, weight_decay: float = 0.0) -> chain:
    """Averaged SGD (torch.optim.ASGD): SGD with a decaying step, and the average of its
    iterates from step t0 on kept in the state.

        η_t = η_0 / (1 + λ η_0 t)^α
        θ_t = θ_{t-1} (1 - λ η_t) - η_t (g_t + w θ_{t-1})
        θ̄_t = Polyak-Ruppert average of θ from step t0 on (`polyak_averaging`)

    chain(add_decayed_weights(weight_decay), add_decayed_weights(lambd),
          scale_by_learning_rate(asgd_schedule(learning_rate, lambd, alpha)),
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
        scale_by_learning_rate(asgd_schedule(learning_rate, lambd=lambd, alpha=alpha)),
        polyak_averaging(t0),
    )


def adafactor_torch(learning_rate: float = 1e-2, *, beta2_decay: float = -0.8,
                    eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                    weight_decay: float = 0.0) -> chain:
    """torch.optim.Adafactor, with torch's arguments and numbers.

        ρ_t = min(lr, 1/√t),   α_t = max(ε2, RMS(θ_{t-1})) ρ_t
        u_t = g_t / √max(V̂_t, ε1²)              (V̂_t factored over the last two axes)
        θ_t = θ_{t-1} (1 - lr λ) - α_t u_t / max(1, RMS(u_t) / d)

    chain(scale_by_factored_rms(decay_rate=-beta2_decay, epsilon=ε1, min_dim_size_to_factor=0,
                                convention="torch"),
          clip_by_block_rms(d), scale_by_param_block_rms(ε2),
          scale_by_learning_rate(ρ_t, flip_sign=False), add_decayed_weights(lr λ), scale(-1))

    It differs from optax's `adafactor` (Shazeer & Stern's Algorithm 4 with optax's defaults) in
    where ε1 enters and which axes are factored (see `scale_by_factored_rms`), in factoring
    every matrix however small, in the relative step min(lr, 1/√t) in place of a learning rate,
    and in the decoupled decay θ(1 - lr λ), scaled by lr and not by ρ_t.

    Args:
      learning_rate: lr ≥ 0, the largest relative step (a number: it also scales the decay).
      beta2_decay: -c ≤ 0, the exponent of β̂2_t = 1 - t^(-c).
      eps: (ε1, ε2): the bound of the second moment's estimate (None: the dtype's machine
        epsilon) and the smallest parameter scale.
      d: the clipping threshold ≥ 1 of the update's RMS.
      weight_decay: λ ≥ 0.

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018. torch.optim.Adafactor.
    """
    eps1, eps2 = eps
    return chain(
        scale_by_factored_rms(decay_rate=-beta2_decay, epsilon=eps1, min_dim_size_to_factor=0,
                              convention="torch"),
        clip_by_block_rms(d),
        scale_by_param_block_rms(eps2),
        scale_by_learning_rate(relative_step_schedule(learning_rate), flip_sign=False),
        add_decayed_weights(learning_rate * weight_decay),
        scale(-1.0),
    )
