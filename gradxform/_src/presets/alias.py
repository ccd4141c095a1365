"""The classic optimizers, each a short chain of the primitives.

Each preset takes optax's name and arguments and gives optax's numbers. Where torch.optim
computes something else, an option gives torch's form (see README, "Reproducing torch.optim").
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from gradxform._src.composition.combine import chain
from gradxform._src.composition.partitioning import masked
from gradxform._src.primitives.adam_family import (
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_radam,
)
from gradxform._src.primitives.adam_variants import scale_by_adan, scale_by_belief, scale_by_yogi
from gradxform._src.primitives.adaptive import scale_by_rms, scale_by_rss, scale_by_stddev
from gradxform._src.primitives.clipping import clip_by_block_rms
from gradxform._src.primitives.cover_statistics import scale_by_sm3
from gradxform._src.primitives.factored import scale_by_factored_rms, scale_by_param_block_rms
from gradxform._src.primitives.layerwise import scale_by_novograd
from gradxform._src.primitives.moments import ema, trace
from gradxform._src.primitives.noise import add_noise
from gradxform._src.primitives.optimistic import scale_by_optimistic_gradient
from gradxform._src.primitives.polyak import scale_by_polyak
from gradxform._src.primitives.quasi_newton import scale_by_lbfgs
from gradxform._src.primitives.scaling import (
    add_decayed_weights,
    identity,
    scale,
    scale_by_learning_rate,
    scale_by_sign,
)
from gradxform._src.primitives.sign_momentum import scale_by_lion
from gradxform._src.primitives.trust_ratio import scale_and_shrink, scale_by_trust_ratio
from gradxform._src.primitives.zoom import scale_by_zoom_linesearch
from gradxform._src.protocol.fields import non_negative, validate_field
from gradxform._src.protocol.masks import MaskLike
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation


def _coupled_decay(weight_decay: ScalarOrSchedule | None) -> tuple[Transformation, ...]:
    """L2 regularisation added to the gradient first (torch's `weight_decay`), if asked for."""
    return () if weight_decay is None else (add_decayed_weights(weight_decay),)


def sgd(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule | None = None,
        nesterov: bool = False, accumulator_dtype: DTypeLike | None = None, *,
        dampening: ScalarOrSchedule = 0.0,
        weight_decay: ScalarOrSchedule | None = None) -> chain:
    """Stochastic gradient descent, with heavy-ball or Nesterov momentum.

    chain([add_decayed_weights(weight_decay)], [trace(momentum, nesterov, dampening)],
          scale_by_learning_rate(learning_rate))

    `weight_decay` is coupled L2 as in torch.optim.SGD; torch's SGD is reproduced exactly by the
    same arguments.
    """
    return chain(
        *_coupled_decay(weight_decay),
        *(() if momentum is None else (trace(momentum, nesterov=nesterov, dampening=dampening,
                                             accumulator_dtype=accumulator_dtype),)),
        scale_by_learning_rate(learning_rate),
    )


def adagrad(learning_rate: ScalarOrSchedule, initial_accumulator_value: ScalarOrSchedule = 0.1,
            eps: ScalarOrSchedule = 1e-7, *, eps_in_sqrt: bool = True,
            weight_decay: ScalarOrSchedule | None = None) -> chain:
    """AdaGrad: chain(scale_by_rss(...), scale_by_learning_rate(learning_rate)).

    torch.optim.Adagrad: `initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False`.
    """
    return chain(
        *_coupled_decay(weight_decay),
        scale_by_rss(initial_accumulator_value, eps=eps, eps_in_sqrt=eps_in_sqrt),
        scale_by_learning_rate(learning_rate),
    )


def rmsprop(learning_rate: ScalarOrSchedule, decay: ScalarOrSchedule = 0.9,
            eps: ScalarOrSchedule = 1e-8, initial_scale: ScalarOrSchedule = 0.0,
            eps_in_sqrt: bool = True, centered: bool = False,
            momentum: ScalarOrSchedule | None = None,
            nesterov: bool = False, bias_correction: bool = False, *,
            weight_decay: ScalarOrSchedule | None = None) -> chain:
    """RMSProp, optionally centered and with momentum.

    chain(scale_by_rms | scale_by_stddev, scale_by_learning_rate, [trace(momentum)])

    The learning rate comes before the momentum, as in optax. torch.optim.RMSprop:
    `decay=alpha (0.99), eps_in_sqrt=False`.
    """
    scaler = scale_by_stddev if centered else scale_by_rms
    return chain(
        *_coupled_decay(weight_decay),
        scaler(decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt,
               bias_correction=bias_correction),
        scale_by_learning_rate(learning_rate),
        *(() if momentum is None else (trace(momentum, nesterov=nesterov),)),
    )


def adam(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
         b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
         eps_root: ScalarOrSchedule = 0.0, mu_dtype: DTypeLike | None = None, *,
         nesterov: bool = False, weight_decay: ScalarOrSchedule | None = None) -> chain:
    """Adam: chain(scale_by_adam(b1, b2, eps, eps_root), scale_by_learning_rate(learning_rate)).

    `weight_decay` adds coupled L2 before the moments, as torch.optim.Adam(weight_decay=...)
    does; for decoupled decay use `adamw`.
    """
    return chain(
        *_coupled_decay(weight_decay),
        scale_by_adam(b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def adamw(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
          b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
          eps_root: ScalarOrSchedule = 0.0, mu_dtype: DTypeLike | None = None,
          weight_decay: ScalarOrSchedule = 1e-4, mask: MaskLike = None, *,
          nesterov: bool = False) -> chain:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
          scale_by_learning_rate(learning_rate))

    θ_t = θ_{t-1} - η (m̂_t / (√v̂_t + ε) + λ θ_{t-1}). torch.optim.AdamW is the same with its
    default `weight_decay=1e-2`.
    """
    return chain(
        scale_by_adam(b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def nadam(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
          b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
          eps_root: ScalarOrSchedule = 0.0, mu_dtype: DTypeLike | None = None, *,
          nesterov: bool = True, momentum_decay: ScalarOrSchedule | None = None,
          weight_decay: ScalarOrSchedule | None = None) -> chain:
    """NAdam: Adam with Nesterov momentum (Dozat, 2016).

    With `momentum_decay=None` (default) it is optax's nadam,
    chain(scale_by_adam(nesterov=True), scale_by_learning_rate) (`nesterov=False` gives Adam,
    as in optax). With a `momentum_decay` ψ
    (torch: 4e-3) it is torch.optim.NAdam, chain(scale_by_nadam(ψ), scale_by_learning_rate).
    """
    direction: Transformation
    if momentum_decay is None:
        direction = scale_by_adam(b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                                  nesterov=nesterov)
    elif not nesterov:
        raise ValueError(
            "nadam: momentum_decay (torch's NAdam) is Nesterov momentum by construction; "
            "nesterov=False with it is contradictory (use adam for no Nesterov momentum)"
        )
    else:
        direction = scale_by_nadam(b1, b2=b2, eps=eps, momentum_decay=momentum_decay)
    return chain(*_coupled_decay(weight_decay), direction, scale_by_learning_rate(learning_rate))


def amsgrad(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
            b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
            eps_root: ScalarOrSchedule = 0.0, mu_dtype: DTypeLike | None = None,
            bias_correction_mu: bool = True, bias_correction_nu: bool = True, *,
            max_of: str = "debiased", weight_decay: ScalarOrSchedule | None = None) -> chain:
    """AMSGrad: chain(scale_by_amsgrad(...), scale_by_learning_rate(learning_rate)).

    `max_of="raw"` reproduces torch.optim.Adam(amsgrad=True); `bias_correction_mu=False,
    bias_correction_nu=False` the paper's Algorithm 1.
    """
    return chain(
        *_coupled_decay(weight_decay),
        scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu,
                         max_of=max_of),
        scale_by_learning_rate(learning_rate),
    )


def adamax(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
           b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8, *,
           weight_decay: ScalarOrSchedule | None = None) -> chain:
    """AdaMax: chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))."""
    return chain(
        *_coupled_decay(weight_decay),
        scale_by_adamax(b1, b2=b2, eps=eps),
        scale_by_learning_rate(learning_rate),
    )


def radam(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
          b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
          eps_root: ScalarOrSchedule = 0.0, threshold: ScalarOrSchedule = 5.0, *,
          nesterov: bool = False, weight_decay: ScalarOrSchedule | None = None) -> chain:
    """RAdam: chain(scale_by_radam(...), scale_by_learning_rate(learning_rate))."""
    return chain(
        *_coupled_decay(weight_decay),
        scale_by_radam(b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold,
                       nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def lion(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
         b2: ScalarOrSchedule = 0.99, mu_dtype: DTypeLike | None = None,
         weight_decay: ScalarOrSchedule = 1e-3, mask: MaskLike = None) -> chain:
    """Lion (Chen et al., 2023) with decoupled weight decay.

    chain(scale_by_lion(b1, b2), add_decayed_weights(weight_decay, mask),
          scale_by_learning_rate(learning_rate))
    """
    return chain(
        scale_by_lion(b1, b2=b2, mu_dtype=mu_dtype),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )



def adafactor(learning_rate: ScalarOrSchedule | None = None,
              min_dim_size_to_factor: int = 128, decay_rate: ScalarOrSchedule = 0.8,
              decay_offset: ScalarOrSchedule = 0, multiply_by_parameter_scale: bool = True,
              clipping_threshold: ScalarOrSchedule | None = 1.0,
              momentum: ScalarOrSchedule | None = None,
              dtype_momentum: DTypeLike = jnp.float32,
              weight_decay_rate: ScalarOrSchedule | None = None, eps: ScalarOrSchedule = 1e-30,
              factored: bool = True, weight_decay_mask: MaskLike = None) -> chain:
    """Adafactor, with optax's arguments and numbers.

    chain(scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps),
          [clip_by_block_rms(clipping_threshold)],
          [scale_by_learning_rate(learning_rate, flip_sign=False)],
          [scale_by_param_block_rms()],
          [ema(momentum, debias=False, accumulator_dtype=dtype_momentum)],
          [add_decayed_weights(weight_decay_rate, weight_decay_mask)],
          scale(-1))

    The paper's relative step size ρ_t = min(10⁻², 1/√t) is `learning_rate=` a schedule of it;
    `learning_rate=None` leaves ρ = 1. Note that the weight decay is added after the learning
    rate, so `weight_decay_rate` is not multiplied by it (as in optax).

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018.
    """
    parts: list[Transformation] = [
        scale_by_factored_rms(factored, decay_rate=decay_rate, step_offset=decay_offset,
                              min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps)
    ]
    if clipping_threshold is not None:
        parts.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        parts.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        parts.append(scale_by_param_block_rms())
    if momentum is not None:
        parts.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        parts.append(add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    parts.append(scale(-1))
    return chain(*parts)


def adabelief(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
              b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-16,
              eps_root: ScalarOrSchedule = 1e-16, *, nesterov: bool = False) -> chain:
    """AdaBelief (Zhuang et al., 2020), with optax's arguments and numbers.

    chain(scale_by_belief(b1, b2, eps, eps_root, nesterov), scale_by_learning_rate(learning_rate))

    The paper's Algorithm 2 adds one ε both to s_t and outside the root: `eps=ε, eps_root=ε`.
    """
    return chain(
        scale_by_belief(b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def yogi(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
         b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-3) -> chain:
    """Yogi (Zaheer et al., 2018), with optax's arguments and numbers.

    chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate(learning_rate))
    """
    return chain(scale_by_yogi(b1, b2=b2, eps=eps), scale_by_learning_rate(learning_rate))


def adan(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.98,
         b2: ScalarOrSchedule = 0.92, b3: ScalarOrSchedule = 0.99, eps: ScalarOrSchedule = 1e-8,
         eps_root: ScalarOrSchedule = 1e-8, weight_decay: ScalarOrSchedule = 0.0,
         mask: MaskLike = None, *, lookahead: str = "optax") -> chain:
    """Adan (Xie et al., 2022) with decoupled weight decay, with optax's arguments and numbers.

    chain(scale_by_adan(b1, b2, b3, eps, eps_root, lookahead), add_decayed_weights(weight_decay,
          mask), scale_by_learning_rate(learning_rate))

    θ_t = θ_{t-1} - η (u_t + λ θ_{t-1}), as optax's `adan`; the paper and the authors' code
    divide instead, θ_t = (θ_{t-1} - η u_t) / (1 + λ η), which agrees to first order in λη.
    `lookahead="paper"` weights the gradient difference as the paper does (see `scale_by_adan`).
    """
    return chain(
        scale_by_adan(b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root, lookahead=lookahead),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


# -- optax's sign, noise, optimistic and layer-wise optimizers, with optax's signatures --------

def sign_sgd(learning_rate: ScalarOrSchedule) -> chain:
    """signSGD: θ_t = θ_{t-1} - η sign(g_t).

    chain(scale_by_sign(), scale_by_learning_rate(learning_rate))

    References:
      Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
      Non-Convex Problems", ICML 2018.
    """
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(learning_rate: ScalarOrSchedule, beta: ScalarOrSchedule = 0.9,
           accumulator_dtype: DTypeLike | None = None) -> chain:
    """Signum: the sign of the gradients' EMA, θ_t = θ_{t-1} - η sign(m_t).

        m_t = β m_{t-1} + (1 - β) g_t

    chain(ema(beta, debias=False, accumulator_dtype), scale_by_sign(),
          scale_by_learning_rate(learning_rate))

    No bias correction: dividing m_t by 1 - β^t > 0 does not change its sign.

    References:
      Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed Optimisation for
      Non-Convex Problems", ICML 2018, Algorithm 3.
    """
    return chain(
        ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
    )


def nadamw(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
           b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
           eps_root: ScalarOrSchedule = 0.0, mu_dtype: DTypeLike | None = None,
           weight_decay: ScalarOrSchedule = 1e-4, mask: MaskLike = None, *,
           nesterov: bool = True) -> chain:
    """NAdamW: NAdam's look-ahead first moment with decoupled weight decay.

    chain(scale_by_adam(b1, b2, eps, eps_root, nesterov=True), add_decayed_weights(weight_decay,
          mask), scale_by_learning_rate(learning_rate))

    `adamw(..., nesterov=True)`, under optax's name and signature (`nesterov=False` is AdamW).

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR workshop 2016.
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    return adamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                 weight_decay=weight_decay, mask=mask, nesterov=nesterov)


def adamaxw(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
            b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
            weight_decay: ScalarOrSchedule = 1e-4, mask: MaskLike = None) -> chain:
    """AdaMax with decoupled weight decay: θ_t = θ_{t-1} - η (m̂_t / u∞_t + λ θ_{t-1}).

    chain(scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask),
          scale_by_learning_rate(learning_rate))

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, §7.1.
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    return chain(
        scale_by_adamax(b1, b2=b2, eps=eps),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_learning_rate(learning_rate),
    )


def noisy_sgd(learning_rate: ScalarOrSchedule, eta: ScalarOrSchedule = 0.01,
              gamma: ScalarOrSchedule = 0.55, key: ArrayLike | None = None, *,
              seed: int | None = None) -> chain:
    """SGD on gradients with annealed Gaussian noise: θ_t = θ_{t-1} - η_t (g_t + σ_t z_t).

    chain(add_noise(eta, gamma, key), scale_by_learning_rate(learning_rate))

    σ_t² = η / t^γ (t = 1, 2, ...), z_t ~ N(0, I) drawn from `key` as optax draws it (see
    `add_noise`). Note that `eta` is the noise's variance, not the learning rate.

    References:
      Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks",
      arXiv:1511.06807, 2015.
    """
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))


def optimistic_gradient_descent(learning_rate: ScalarOrSchedule, alpha: ScalarOrSchedule = 1.0,
                                beta: ScalarOrSchedule = 1.0) -> chain:
    """Optimistic gradient descent: θ_t = θ_{t-1} - η ((α + β) g_t - β g_{t-1}).

    chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))

    For min-max games (descend on one player's params, ascend on the other's by negating its
    gradients): it converges where gradient descent-ascent cycles.

    References:
      Mokhtari, Ozdaglar & Pattathil, "A Unified Analysis of Extra-gradient and Optimistic
      Gradient Methods for Saddle Point Problems: Proximal Point Approach", AISTATS 2020.
    """
    return chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))


def optimistic_adam(learning_rate: ScalarOrSchedule, optimism: ScalarOrSchedule | None = None,
                    b1: ScalarOrSchedule = 0.9, b2: ScalarOrSchedule = 0.999,
                    eps: ScalarOrSchedule = 1e-8, eps_root: ScalarOrSchedule = 0.0,
                    mu_dtype: DTypeLike | None = None, *, nesterov: bool = True) -> chain:
    """Optimistic Adam: θ_t = θ_{t-1} - η r_t - o (r_t - r_{t-1}), r_t Adam's direction.

    chain(scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov),
          scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism), scale(-1))

    With `optimism=None`, o = η, as in the paper. optax's older interface, whose learning rate
    is α of the optimistic step (optax refuses a schedule there; here it may be one, and
    `optimism=None` then follows the same schedule); `optimistic_adam_v2` has the learning
    rate apart from α and β.

    References:
      Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with Optimism", ICLR 2018,
      Algorithm 1.
    """
    validate_field("optimistic_adam", "learning_rate", learning_rate, non_negative)
    validate_field("optimistic_adam", "optimism", optimism, non_negative, None)
    return chain(
        scale_by_adam(b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                      nesterov=nesterov),
        scale_by_optimistic_gradient(learning_rate,
                                     learning_rate if optimism is None else optimism),
        scale(-1.0),
    )


def optimistic_adam_v2(learning_rate: ScalarOrSchedule, *, alpha: ScalarOrSchedule = 1.0,
                       beta: ScalarOrSchedule = 1.0, b1: ScalarOrSchedule = 0.9,
                       b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-8,
                       eps_root: ScalarOrSchedule = 0.0, mu_dtype: DTypeLike | None = None,
                       nesterov: bool = True) -> chain:
    """Optimistic Adam: θ_t = θ_{t-1} - η ((α + β) r_t - β r_{t-1}), r_t Adam's direction.

    chain(scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov),
          scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))

    `optimistic_adam(η, o)` is this with learning_rate=1, α = η, β = o.

    References:
      Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with Optimism", ICLR 2018,
      Algorithm 1.
    """
    return chain(
        scale_by_adam(b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype,
                      nesterov=nesterov),
        scale_by_optimistic_gradient(alpha, beta),
        scale_by_learning_rate(learning_rate),
    )


def novograd(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
             b2: ScalarOrSchedule = 0.25, eps: ScalarOrSchedule = 1e-6,
             eps_root: ScalarOrSchedule = 0.0, weight_decay: ScalarOrSchedule = 0.0) -> chain:
    """NovoGrad: momentum of gradients normalized per layer, with decoupled weight decay.

    chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
          scale_by_learning_rate(learning_rate))

    References:
      Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for
      Training of Deep Networks", arXiv:1905.11286, 2019.
    """
    return chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
                 scale_by_learning_rate(learning_rate))


# -- Layer-wise and learning-rate-free optimizers: trust ratios, covers, Polyak steps ----------


def lamb(learning_rate: ScalarOrSchedule, b1: ScalarOrSchedule = 0.9,
         b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-6,
         eps_root: ScalarOrSchedule = 0.0, weight_decay: ScalarOrSchedule = 0.0,
         mask: MaskLike = None) -> chain:
    """LAMB (You et al., 2020): Adam's direction with decoupled weight decay, scaled per layer
    by the trust ratio ‖θ‖ / ‖u‖, with optax's arguments and numbers.

    chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
          scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))

    θ_t = θ_{t-1} - η ‖θ_{t-1}‖ / ‖r_t + λθ_{t-1}‖ · (r_t + λθ_{t-1}), r_t Adam's direction
    (Algorithm 2 of the paper, with φ the identity). Arguments may be given by position, as
    in optax.

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020.
    """
    return chain(
        scale_by_adam(b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask=mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


def lars(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule = 0.0,
         weight_decay_mask: MaskLike = True, trust_coefficient: ScalarOrSchedule = 0.001,
         eps: ScalarOrSchedule = 0.0, trust_ratio_mask: MaskLike = True,
         momentum: ScalarOrSchedule = 0.9, nesterov: bool = False) -> chain:
    """LARS (You et al., 2017): SGD with momentum on layer-wise trust-ratio steps, with optax's
    arguments and numbers.

    chain(add_decayed_weights(weight_decay, weight_decay_mask),
          masked(scale_by_trust_ratio(trust_coefficient=c, eps=eps), trust_ratio_mask),
          scale_by_learning_rate(learning_rate), trace(momentum, nesterov))

    The local learning rate c ‖θ‖ / (‖g + λθ‖ + ε) multiplies the L2-regularised gradient; the
    momentum (torch's form, v = μv + u) comes after the learning rate, as in the paper's
    Algorithm 1. Leave biases and normalization scales out with `trust_ratio_mask` and
    `weight_decay_mask`, as the paper does. Arguments may be given by position, as in optax.

    References:
      You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017.
    """
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
               trust_ratio_mask),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov=nesterov),
    )


def fromage(learning_rate: ScalarOrSchedule, min_norm: ScalarOrSchedule = 1e-6) -> chain:
    """Fromage (Bernstein et al., 2020), with optax's arguments and numbers.

    chain(scale_by_trust_ratio(min_norm), scale_and_shrink(learning_rate))

    θ_t = (θ_{t-1} - η ‖θ_{t-1}‖ / ‖g_t‖ · g_t) / √(1 + η²) per layer, norms at least
    `min_norm`: steps of a fixed relative size under the paper's deep relative trust, with the
    weights' norms kept from growing.

    References:
      Bernstein, Vahdat, Yue & Liu, "On the distance between two neural networks and the
      stability of learning", NeurIPS 2020.
    """
    return chain(scale_by_trust_ratio(min_norm), scale_and_shrink(learning_rate))


def sm3(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule | None = 0.9) -> chain:
    """SM3 (Anil et al., 2019), with optax's arguments and numbers.

    chain(scale_by_sm3(momentum), scale_by_learning_rate(learning_rate))

    AdaGrad-like steps from one accumulator per row and per column of each matrix (per slice
    of each tensor) instead of one per parameter; `momentum=None` (or 0) takes no momentum.

    References:
      Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive Optimization", NeurIPS 2019.
    """
    return chain(scale_by_sm3(0.0 if momentum is None else momentum),
                 scale_by_learning_rate(learning_rate))


def polyak_sgd(max_learning_rate: ScalarOrSchedule = 1.0, scaling: ScalarOrSchedule = 1.0,
               f_min: ScalarOrSchedule = 0.0, eps: ScalarOrSchedule = 0.0,
               variant: str = "sps") -> chain:
    """SGD with the stochastic Polyak step size (Loizou et al., 2021), with optax's arguments
    and numbers; `update` takes the loss at the params as `value=`.

    chain(scale_by_learning_rate(scaling), scale_by_polyak(f_min, max_learning_rate, eps,
          variant))

    u_t = -s γ_t g_t with γ_t = min((f(θ_t) - f*) / (‖s g_t‖² + ε), γ_max): as in optax, the
    Polyak step sees the gradient already scaled by s, so for s ≠ 1 the step is
    min(gap / (s² ‖g‖² + ε), γ_max) (optax's docstring writes s min(gap / (‖g‖² + ε), γ_max)).
    The latter is `chain(scale_by_polyak(f_min, max_learning_rate, eps, variant),
    scale_by_learning_rate(s))`; for s = 1 the two agree.

        updates, state = opt.update(grads, state, params, value=loss)

    References:
      Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An
      Adaptive Learning Rate for Fast Convergence", AISTATS 2021.
    """
    return chain(scale_by_learning_rate(scaling),
                 scale_by_polyak(f_min, max_learning_rate, eps, variant))


# -- full-batch optimisation --

# optax's default line search for L-BFGS (a frozen transformation: one instance serves all).
LBFGS_LINESEARCH = scale_by_zoom_linesearch(max_linesearch_steps=20,
                                            initial_guess_strategy="one")


def lbfgs(learning_rate: ScalarOrSchedule | None = None, memory_size: int = 10,
          scale_init_precond: bool = True,
          linesearch: Transformation | None = LBFGS_LINESEARCH) -> chain:
    """L-BFGS with a line search (Liu & Nocedal, 1989), with optax's arguments and numbers.

    chain(scale_by_lbfgs(memory_size, scale_init_precond),
          scale(-1.0) | scale_by_learning_rate(learning_rate),
          linesearch | identity())

    w_{k+1} = w_k - η_k H_k ∇f(w_k), H_k the L-BFGS inverse-Hessian estimate and η_k the step
    the line search finds (by default a strong-Wolfe zoom search starting at η = 1). Its
    `update` takes the line search's keyword arguments, `value`, `grad` and `value_fn`:

        value, grad = gx.value_and_grad_from_state(f)(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)

    `gx.minimize(f, params)` runs that loop compiled, to a tolerance.

    Args:
      learning_rate: a fixed step size or schedule instead of η = 1 before the search (None:
        the search alone sets the step).
      memory_size: the number of past steps kept, m ≥ 1.
      scale_init_precond: scale the initial estimate by ⟨s, y⟩/⟨y, y⟩ (see `scale_by_lbfgs`).
      linesearch: the line search, e.g. `scale_by_zoom_linesearch(...)` or
        `scale_by_backtracking_linesearch(...)`; None for none (then set a learning rate).

    References:
      Liu & Nocedal, "On the limited memory BFGS method for large scale optimization",
      Mathematical Programming 45, 1989.
    """
    step = scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate)
    return chain(
        scale_by_lbfgs(memory_size, scale_init_precond),
        step,
        identity() if linesearch is None else linesearch,
    )
