"""Two optimizers of 2024 that neither optax nor torch.optim ship: C-AdamW and MARS-AdamW."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradxform._src.composition.cautious_masking import cautious
from gradxform._src.composition.combine import chain
from gradxform._src.composition.partitioning import partition
from gradxform._src.presets.alias import adamw
from gradxform._src.primitives.scaling import add_decayed_weights, scale_by_learning_rate
from gradxform._src.primitives.transformers_adam import scale_by_adam_transformers
from gradxform._src.primitives.variance_reduction import scale_by_mars
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation


def cadamw(learning_rate: ScalarOrSchedule, *, b1: ScalarOrSchedule = 0.9,
           b2: ScalarOrSchedule = 0.999, eps: ScalarOrSchedule = 1e-6,
           weight_decay: ScalarOrSchedule = 0.0, correct_bias: bool = True) -> chain:
    """Cautious AdamW (C-AdamW): AdamW whose Adam direction keeps only the coordinates that
    agree in sign with the gradient.

        u_t = √(1 - β2^t)/(1 - β1^t) · m_t / (√v_t + ε)
        φ_t = 1[m_t ⊙ g_t > 0],   θ_t = θ_{t-1} - η (u_t ⊙ φ_t / max(mean φ_t, 10⁻³) + λ θ_{t-1})

    chain(cautious(scale_by_adam_transformers(b1, b2, eps)), add_decayed_weights(weight_decay),
          scale_by_learning_rate(learning_rate)).

    The authors' `c_adamw.AdamW` copies transformers' AdamW, so ε is added before the bias
    correction (`scale_by_adam_transformers`) and the defaults are theirs (ε = 1e-6, λ = 0);
    the decay is not masked. This is the per-parameter loop of their code (`foreach=False`);
    its `foreach=True` path adds ε after the correction, as `scale_by_adam` does, which
    `chain(cautious(scale_by_adam(b1, b2, eps)), add_decayed_weights(λ),
    scale_by_learning_rate(η))` gives.

    References:
      Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code",
      arXiv:2411.16085, 2024; reference code github.com/kyleliang919/C-Optim, c_adamw.py.
    """
    return chain(
        cautious(scale_by_adam_transformers(b1, b2=b2, eps=eps, correct_bias=correct_bias)),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )


def _matrices_to_mars(params) -> object:
    """'mars' for each 2-D leaf, 'adamw' for every other one (MARS's default grouping)."""
    return jax.tree.map(lambda p: "mars" if jnp.ndim(p) == 2 else "adamw", params)


def mars(learning_rate: ScalarOrSchedule = 3e-3, *, b1: ScalarOrSchedule = 0.95,
         b2: ScalarOrSchedule = 0.99, eps: ScalarOrSchedule = 1e-8,
         weight_decay: ScalarOrSchedule = 0.0, gamma: ScalarOrSchedule = 0.025,
         optimize_1d: bool = False, learning_rate_1d: ScalarOrSchedule = 3e-3,
         b1_1d: ScalarOrSchedule = 0.9, b2_1d: ScalarOrSchedule = 0.95,
         weight_decay_1d: ScalarOrSchedule = 0.1) -> Transformation:
    """MARS-AdamW: Adam of the variance-reduced gradient on matrices, AdamW on the other params.

        2-D leaves:  θ_t = θ_{t-1} - η (scale_by_mars(β1, β2, ε, γ)(g)_t + λ θ_{t-1})
        the others:  θ_t = θ_{t-1} - η_1d (m̂_t / (√v̂_t + ε) + λ_1d θ_{t-1})   (Adam, β1_1d, β2_1d)

    The authors' `MARS(mars_type="mars-adamw")` decides by `grad.ndim == 2`: vectors, scalars
    and leaves of 3 or more dimensions (convolution kernels) take the AdamW branch with its own
    learning rate, betas and decay (`optimize_1d=False`, their default). With
    `optimize_1d=True` every leaf takes the MARS branch with η, λ. The MARS branch keeps the
    previous gradient in its state; theirs stores it for every leaf, but the AdamW branch never
    reads it. Their 1-D learning rate is `lr_1d / lr` times the
    current `lr`; here `learning_rate_1d` is its own number or schedule.

    Args:
      learning_rate: η (authors 3e-3).
      b1, b2: the betas of the MARS branch (0.95, 0.99).
      eps: ε, added to √v̂_t in both branches (1e-8).
      weight_decay: λ of the MARS branch, decoupled (0).
      gamma: γ, the weight of the gradient correction (0.025).
      optimize_1d: use the MARS branch for every leaf.
      learning_rate_1d, b1_1d, b2_1d, weight_decay_1d: η_1d, the betas and λ_1d of the AdamW
        branch (3e-3, 0.9, 0.95, 0.1).

    References:
      Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training
      Large Models", arXiv:2411.10438, 2024, Algorithm 2; reference code
      github.com/AGI-Arena/MARS, MARS/optimizers/mars.py.
    """
    branch = chain(
        scale_by_mars(b1, b2=b2, eps=eps, gamma=gamma),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
    if optimize_1d:
        return branch
    return partition(
        {"mars": branch,
         "adamw": adamw(learning_rate_1d, b1=b1_1d, b2=b2_1d, eps=eps,
                        weight_decay=weight_decay_1d)},
        _matrices_to_mars,
    )
