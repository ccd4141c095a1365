"""Optimizers from recent papers, assembled from gradxform's primitives (optax.contrib's names).

Muon, Sophia, Schedule-Free SGD/AdamW, ADOPT, AdEMAMix, ACProp, MADGRAD, ...: each is a short
chain (or wrapper) of primitives. They are public in `gradxform.contrib`, as in optax.contrib.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.typing import DTypeLike

from gradxform._src.composition.combine import chain
from gradxform._src.composition.partitioning import partition
from gradxform._src.composition.schedule_free_wrapper import schedule_free
from gradxform._src.presets.alias import adamw, sgd
from gradxform._src.primitives.adaptive import scale_by_rms
from gradxform._src.primitives.asynchronous_moments import (
    quarter_power_of_step,
    scale_by_acprop,
    scale_by_adopt,
)
from gradxform._src.primitives.coin_betting import scale_by_cocob
from gradxform._src.primitives.curvature import scale_by_sophia
from gradxform._src.primitives.distance_over_gradients import (
    InitStep,
    scale_by_dog,
    scale_by_dowg,
)
from gradxform._src.primitives.dual_averaging import scale_by_madgrad
from gradxform._src.primitives.moments import trace
from gradxform._src.primitives.newton_schulz import DEFAULT_NS_COEFFS, StaticDims
from gradxform._src.primitives.orthogonal import MuonLabels, scale_by_muon, scale_by_shape
from gradxform._src.primitives.privacy_noise import differentially_private_aggregate
from gradxform._src.primitives.scaling import (
    add_decayed_weights,
    identity,
    scale_by_learning_rate,
)
from gradxform._src.primitives.slow_momentum import (
    scale_by_ademamix,
    scale_by_simplified_ademamix,
)
from gradxform._src.protocol.fields import check_argument, integer_at_least
from gradxform._src.protocol.masks import MaskLike
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.schedules.polynomial import linear_schedule


def muon(learning_rate: ScalarOrSchedule, *,
         ns_coeffs: Sequence[float] | Sequence[Sequence[float]] = DEFAULT_NS_COEFFS,
         ns_steps: int = 5, beta: ScalarOrSchedule = 0.95, eps: ScalarOrSchedule = 1e-8,
         weight_decay: ScalarOrSchedule = 0.0, weight_decay_mask: MaskLike = None,
         mu_dtype: DTypeLike | None = None, nesterov: bool = True, adaptive: bool = False,
         adam_b1: ScalarOrSchedule = 0.9, adam_b2: ScalarOrSchedule = 0.999,
         adam_eps_root: ScalarOrSchedule = 0.0, adam_weight_decay: ScalarOrSchedule = 0.0,
         adam_learning_rate: ScalarOrSchedule | None = None,
         muon_weight_dimension_numbers: Any = None, consistent_rms: float | None = None,
         debias: bool = True, ns_dtype: DTypeLike | None = None) -> partition:
    """Muon for the matrices, AdamW for everything else (optax's `contrib.muon`).

        partition({
            "muon": chain(scale_by_muon(...), scale_by_shape(...),
                          add_decayed_weights(weight_decay, weight_decay_mask),
                          scale_by_learning_rate(learning_rate)),
            "adam": adamw(adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=eps, ...),
        }, labels)

    θ ← θ - η (s · NS(m̃) + λ θ) for a matrix, s from `scale_by_shape`. By default the 2-D
    leaves are Muon's and the rest go to AdamW (with Nesterov momentum when `nesterov`, as in
    optax). `muon_weight_dimension_numbers` chooses otherwise: a tree (prefix of the params) of
    `MuonDimensionNumbers` for Muon's leaves and None for AdamW's — this is how embeddings and
    the output head, which are 2-D but not hidden layers, are sent to AdamW, and how stacked
    layers and conv kernels become Muon's (see `MuonDimensionNumbers`).

    torch.optim.Muon(lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps,
    adjust_lr_fn) on (out, in) weights is `muon(lr, weight_decay=..., beta=momentum,
    nesterov=..., ns_coeffs=..., eps=..., ns_steps=..., debias=False, ns_dtype=jnp.bfloat16,
    muon_weight_dimension_numbers=MuonDimensionNumbers(reduction_axis=1, output_axis=0),
    consistent_rms=None or 0.2)`.

    Args:
      learning_rate: η for Muon's matrices (and AdamW's, unless `adam_learning_rate`).
      ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov, adaptive, debias, ns_dtype: as in
        `scale_by_muon` (eps is also AdamW's ε).
      weight_decay, weight_decay_mask: decoupled weight decay λ of the matrices, multiplied by
        η as in torch and optax.
      adam_b1, adam_b2, adam_eps_root, adam_weight_decay, adam_learning_rate: AdamW's.
      muon_weight_dimension_numbers: which leaves are Muon's and how they are matrices.
      consistent_rms: as in `scale_by_shape`.

    Returns:
      A `partition` with groups "muon" and "adam".

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
      Liu et al., "Muon is Scalable for LLM Training", 2025, arXiv:2502.16982.
    """
    dims = StaticDims(muon_weight_dimension_numbers)
    return partition(
        {
            "muon": chain(
                scale_by_muon(ns_coeffs=ns_coeffs, ns_steps=ns_steps, beta=beta, eps=eps,
                              mu_dtype=mu_dtype, nesterov=nesterov, debias=debias,
                              adaptive=adaptive, weight_dimension_numbers=dims,
                              ns_dtype=ns_dtype),
                scale_by_shape(weight_dimension_numbers=dims, consistent_rms=consistent_rms),
                add_decayed_weights(weight_decay, mask=weight_decay_mask),
                scale_by_learning_rate(learning_rate),
            ),
            "adam": adamw(
                learning_rate if adam_learning_rate is None else adam_learning_rate,
                b1=adam_b1, b2=adam_b2, eps=eps, eps_root=adam_eps_root,
                weight_decay=adam_weight_decay, mu_dtype=mu_dtype, nesterov=nesterov,
            ),
        },
        MuonLabels(dims),
    )


def sophia(learning_rate: ScalarOrSchedule, *, b1: ScalarOrSchedule = 0.965,
           b2: ScalarOrSchedule = 0.99, eps: ScalarOrSchedule = 1e-8,
           weight_decay: ScalarOrSchedule = 1e-4, weight_decay_mask: MaskLike = None,
           gamma: ScalarOrSchedule = 0.01, clip_threshold: ScalarOrSchedule | None = 1.0,
           mu_dtype: DTypeLike | None = None, debias: bool = True) -> chain:
    """Sophia with decoupled weight decay (Liu et al. 2023).

    chain(scale_by_sophia(b1, b2, eps, gamma, clip_threshold),
          add_decayed_weights(weight_decay, weight_decay_mask),
          scale_by_learning_rate(learning_rate))

    θ_t = θ_{t-1} - η (clip(m̂_t / max(γ h_t, ε), ρ) + λ θ_{t-1}). Pass the Hessian estimate on
    refresh steps: `update(grads, state, params, hessian=ĥ)` (see the module docstring).
    optax's `contrib.sophia` takes the same arguments except `hessian_diagonal_fn` and
    `update_interval`: here the training step computes the estimate and decides when.
    """
    return chain(
        scale_by_sophia(b1, b2=b2, eps=eps, gamma=gamma, clip_threshold=clip_threshold,
                        mu_dtype=mu_dtype, debias=debias),
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )


def warmup_learning_rate(learning_rate: float, warmup_steps: int | None, owner: str
                         ) -> ScalarOrSchedule:
    """γ_t = γ min(1, (t + 1)/W): the reference implementation's warmup (step 0 already moves)."""
    if warmup_steps is None:
        return learning_rate
    check_argument(owner, "warmup_steps", warmup_steps, integer_at_least(1))
    return linear_schedule(learning_rate / warmup_steps, learning_rate, warmup_steps - 1)


def schedule_free_sgd(learning_rate: float = 1.0, *, warmup_steps: int | None = None,
                      b1: ScalarOrSchedule = 0.9, weight_decay: ScalarOrSchedule | None = None,
                      weight_lr_power: ScalarOrSchedule = 2.0,
                      state_dtype: DTypeLike | None = None) -> schedule_free:
    """Schedule-Free SGD: schedule_free(sgd(γ, weight_decay=λ), γ, b1=β).

    z_{t+1} = z_t - γ_t (∇f(y_t) + λ y_t). `warmup_steps` W gives γ_t = γ min(1, (t + 1)/W),
    as the paper's reference implementation. optax's `contrib.schedule_free_sgd` takes the same
    arguments and gives the same numbers without warmup (see `schedule_free` for the difference
    with one).
    """
    lr = warmup_learning_rate(learning_rate, warmup_steps, "schedule_free_sgd")
    return schedule_free(sgd(lr, weight_decay=weight_decay), lr, b1=b1,
                         weight_lr_power=weight_lr_power, state_dtype=state_dtype)


def schedule_free_adamw(learning_rate: float = 0.0025, *, warmup_steps: int | None = None,
                        b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
                        eps: ScalarOrSchedule = 1e-8, weight_decay: ScalarOrSchedule = 0.0,
                        weight_lr_power: ScalarOrSchedule = 2.0,
                        state_dtype: DTypeLike | None = None) -> schedule_free:
    """Schedule-Free AdamW: the base step is Adam without momentum, with decoupled decay at y.

        v_t = β2 v_{t-1} + (1 - β2) g_t²,   z_{t+1} = z_t - γ_t (g_t / (√(v_t / (1 - β2^t)) + ε)
                                                              + λ y_t)

    schedule_free(chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
                        add_decayed_weights(weight_decay), scale_by_learning_rate(γ)), γ, b1=β)

    Same arguments and numbers as optax's `contrib.schedule_free_adamw` (without warmup; see
    `schedule_free`).

    References:
      Defazio et al., "The Road Less Scheduled", NeurIPS 2024, Algorithm 1 (Schedule-Free AdamW).
    """
    lr = warmup_learning_rate(learning_rate, warmup_steps, "schedule_free_adamw")
    base = chain(
        scale_by_rms(b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(lr),
    )
    return schedule_free(base, lr, b1=b1, weight_lr_power=weight_lr_power,
                         state_dtype=state_dtype)


# -- optax.contrib's adaptive methods: ADOPT, AdEMAMix, ACProp, MADGRAD ------------------------


def adopt(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
          b2: ScalarOrSchedule = 0.9999, eps: ScalarOrSchedule = 1e-6,
          mu_dtype: DTypeLike | None = None, *, nesterov: bool = False,
          use_clipping: bool = True,
          clip_value_fn: Callable[[jax.Array], jax.Array] = quarter_power_of_step) -> chain:
    """ADOPT: chain(scale_by_adopt(b1, b2, eps, ...), scale_by_learning_rate(learning_rate)).

    θ_t = θ_{t-1} - η m_t, m_t the EMA of g_t / max(√v_{t-1}, ε) clipped to ±t^(1/4) (see
    `scale_by_adopt`). optax's `contrib.adopt`, with its arguments and numbers.

    References:
      Taniguchi et al., "ADOPT: Modified Adam Can Converge with Any β2 with the Optimal Rate",
      NeurIPS 2024.
    """
    return chain(
        scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov, use_clipping=use_clipping,
                       clip_value_fn=clip_value_fn),
        scale_by_learning_rate(learning_rate),
    )


def ademamix(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
             b2: ScalarOrSchedule = 0.999, b3: ScalarOrSchedule = 0.9999,
             alpha: ScalarOrSchedule = 5.0, eps: ScalarOrSchedule = 1e-8,
             eps_root: ScalarOrSchedule = 0.0, mu_dtype: DTypeLike | None = None,
             weight_decay: ScalarOrSchedule = 0.0, mask: MaskLike = None) -> chain:
    """AdEMAMix with decoupled weight decay (optax's `contrib.ademamix`).

    chain(scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
          add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))

    θ_t = θ_{t-1} - η ((m̂1_t + α m2_t) / (√ν̂_t + ε) + λ θ_{t-1}). The default α is 5 here and
    6 in `scale_by_ademamix`, as in optax.

    References:
      Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", 2024
      (arXiv:2409.03137).
    """
    return chain(
        scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def simplified_ademamix(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.99,
                        b2: ScalarOrSchedule = 0.95, alpha: ScalarOrSchedule = 0.0,
                        eps: ScalarOrSchedule = 1e-8, eps_root: ScalarOrSchedule = 0.0,
                        weight_decay: ScalarOrSchedule = 0.0, mask: MaskLike = None) -> chain:
    """Simplified AdEMAMix with decoupled weight decay (optax's `contrib.simplified_ademamix`).

    chain(scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
          add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))

    References:
      Morwani et al., "Connections between Schedule-Free Optimizers, AdEMAMix, and
      Accelerated SGD Variants", 2025 (arXiv:2502.02431).
    """
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def acprop(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
           b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-16,
           eps_root: ScalarOrSchedule = 1e-16, weight_decay: ScalarOrSchedule = 0.0,
           mask: MaskLike = None) -> chain:
    """ACProp with decoupled weight decay (optax's `contrib.acprop`).

    chain(scale_by_acprop(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
          scale_by_learning_rate(learning_rate))

    References:
      Zhuang et al., "Momentum Centering and Asynchronous Update for Adaptive Gradient
      Methods", NeurIPS 2021 (arXiv:2110.05454).
    """
    return chain(
        scale_by_acprop(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def madgrad(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9,
            weight_decay: ScalarOrSchedule = 0.0, eps: ScalarOrSchedule = 1e-6) -> chain:
    """MADGRAD with coupled weight decay: chain(add_decayed_weights(weight_decay),
    scale_by_madgrad(learning_rate, momentum, eps)) (optax's `contrib.madgrad`).

    The decay λθ is added to the gradient before it enters MADGRAD's sums, as in optax and the
    paper's reference code (its `decouple_decay=False`).

    References:
      Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual
      Averaged Gradient Method for Stochastic Optimization", JMLR 2022 (arXiv:2101.11075).
    """
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate, momentum, eps),
    )


# -- optax.contrib's learning-rate-free methods: DoG, DoWG, COCOB ------------------------------


def dog(learning_rate: ScalarOrSchedule = 1.0,
        init_step: InitStep = ("heuristic", 1e-6), eps: ScalarOrSchedule = 1e-8,
        weight_decay: ScalarOrSchedule | None = None, mask: MaskLike = None) -> chain:
    """DoG, "distance over gradients" (optax's `contrib.dog`).

    chain([add_decayed_weights(weight_decay, mask)], scale_by_dog(init_step, eps),
          scale_by_learning_rate(learning_rate))

    θ_{t+1} = θ_t - c r̄_t / √(Σ_k ‖g_k‖² + ε) g_t; the learning rate c is a multiplier of DoG's
    step (1, the paper's default). The weight decay, when given, is added to the gradient
    first (coupled), as in optax.

    References:
      Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
      Schedule", ICML 2023 (arXiv:2302.12022).
    """
    decay = identity() if weight_decay is None else add_decayed_weights(weight_decay, mask=mask)
    return chain(decay, scale_by_dog(init_step, eps), scale_by_learning_rate(learning_rate))


def dowg(learning_rate: ScalarOrSchedule = 1.0,
         init_estim_sq_dist: ScalarOrSchedule | None = None, eps: ScalarOrSchedule = 1e-4,
         weight_decay: ScalarOrSchedule | None = None, mask: MaskLike = None) -> chain:
    """DoWG, "distance over weighted gradients" (optax's `contrib.dowg`).

    chain([add_decayed_weights(weight_decay, mask)], scale_by_dowg(init_estim_sq_dist, eps),
          scale_by_learning_rate(learning_rate))

    References:
      Khaled, Mishchenko & Jin, "DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method", NeurIPS 2023 (arXiv:2305.16284).
    """
    decay = identity() if weight_decay is None else add_decayed_weights(weight_decay, mask=mask)
    return chain(decay, scale_by_dowg(init_estim_sq_dist, eps),
                 scale_by_learning_rate(learning_rate))


def cocob(learning_rate: ScalarOrSchedule = 1.0, alpha: float = 100.0, eps: float = 1e-8,
          weight_decay: ScalarOrSchedule = 0.0, mask: MaskLike = None) -> chain:
    """COCOB-Backprop (optax's `contrib.cocob`).

    chain(add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate,
          flip_sign=False), scale_by_cocob(alpha, eps))

    The gradients, with the coupled decay and multiplied by the learning rate (1: none), are
    what the coins bet on; `scale_by_cocob` returns the move to the new iterate.

    References:
      Orabona & Tommasi, "Training Deep Networks without Learning Rates Through Coin
      Betting", NeurIPS 2017 (arXiv:1705.07795).
    """
    return chain(
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )


# -- optax.contrib's differentially private SGD ------------------------------------------------


def dpsgd(learning_rate: ScalarOrSchedule, l2_norm_clip: float, noise_multiplier: float,
          seed: int, momentum: ScalarOrSchedule | None = None,
          nesterov: bool = False) -> chain:
    """DP-SGD (optax's `contrib.dpsgd`).

    chain(differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed=seed),
          [trace(momentum, nesterov=nesterov)], scale_by_learning_rate(learning_rate))

    θ_{t+1} = θ_t - η (Σ_i clip_C(g_i) + σ C ξ_t) / B, with optional heavy-ball momentum.
    `update` takes per-example gradients (examples on axis 0 of every leaf).

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (arXiv:1607.00133).
    """
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed=seed),
        identity() if momentum is None else trace(momentum, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )
