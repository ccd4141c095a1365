"""gradxform: composable gradient transformations for JAX.

Every idea of an optimizer is one transformation with `init(params) -> state` and
`update(updates, state, params=None) -> (updates, state)`; optimizers are short chains of them.
"""

from gradxform._base import (
    EmptyState,
    Schedule,
    Transformation,
    hyperparameter,
    pytree_dataclass,
    resolve,
    safe_increment,
    static,
)
from gradxform.adam import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByNadamState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_radam,
)
from gradxform.adaptive import (
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByStddevState,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from gradxform.alias import (
    adagrad,
    adam,
    adamax,
    adamw,
    amsgrad,
    lion,
    nadam,
    radam,
    rmsprop,
    sgd,
)
from gradxform.combine import chain, hyperparams
from gradxform.lion import ScaleByLionState, scale_by_lion
from gradxform.momentum import (
    EmaState,
    TraceState,
    bias_correction,
    decay_from_half_life,
    effective_window,
    ema,
    half_life_from_decay,
    nesterov_lookahead_params,
    trace,
)
from gradxform.scaling import (
    CountState,
    add_decayed_weights,
    identity,
    scale,
    scale_by_learning_rate,
    scale_by_sign,
    set_to_zero,
)
from gradxform.update import apply_updates

# -- schedules (gradxform.schedules) --
from gradxform.schedules import (
    constant_schedule,
    cosine_annealing_warm_restarts_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    cyclic_lr_schedule,
    exponential_decay,
    function_schedule,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    multistep_lr_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    sgdr_schedule,
    step_lr_schedule,
    transformer_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    warmup_stable_decay_schedule,
)

# isort: split
# -- clipping and gradient hygiene (gradxform.clipping) --
from gradxform.clipping import (
    ClipByGlobalNormState,
    ZeroNansState,
    adaptive_grad_clip,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
    global_norm,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
    unitwise_norm,
    zero_nans,
)

# isort: split
# -- combinators (gradxform.combinators, gradxform.wrappers) --
from gradxform.averaging import (
    EmaParamsState,
    LookaheadState,
    averaged_params,
    ema_params,
    lookahead,
    slow_params,
)
from gradxform.combinators import (
    MaskedState,
    PartitionState,
    freeze,
    get_state,
    masked,
    named_chain,
    partition,
    selective_transform,
)
from gradxform.wrappers import (
    ApplyIfFiniteState,
    MultiSteps,
    MultiStepsState,
    apply_if_finite,
    skip_large_updates,
    skip_not_finite,
)

# -- training-step helpers (gradxform.step) --
from gradxform.flatten import PackedTree, flatten, pack, unpack
from gradxform.step import make_step, update_and_apply
# -- interop (gradxform.interop) --
from gradxform.interop import from_optax, to_optax

# -- beyond AdamW (gradxform.sophia, muon, schedule_free, adafactor, quantized) --
from gradxform.adafactor import (
    FactoredState,
    adafactor,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradxform.muon import (
    MuonDimensionNumbers,
    MuonState,
    muon,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_shape,
)
from gradxform.quantized import (
    QuantizedArray,
    QuantizedState,
    dynamic_map,
    quantize_blockwise,
    quantize_state,
)
from gradxform.schedule_free import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
from gradxform.sophia import (
    SophiaState,
    gauss_newton_bartlett_diagonal,
    hutchinson_diagonal,
    scale_by_sophia,
    sophia,
)

__version__ = "0.1.0"

__all__ = sorted(
    name for name, value in list(globals().items())
    if not name.startswith("_") and getattr(value, "__module__", "").startswith("gradxform")
)
