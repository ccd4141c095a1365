"""gradxform: composable gradient transformations for JAX.

Every idea of an optimizer is one transformation with `init(params) -> state` and
`update(updates, state, params=None) -> (updates, state)`; optimizers are short chains of them.
"""

# -- The protocol: transformations, schedules and their fields (gradxform/_src/protocol/) --
from gradxform._src.protocol.caches import clear_caches
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import ElementwiseTransformation
from gradxform._src.protocol.fields import child, constant, hyperparameter, in_interval, static
from gradxform._src.protocol.schedule import Schedule, resolve
from gradxform._src.protocol.transformation import (
    EmptyState,
    Transformation,
    require_params,
    safe_increment,
)
from gradxform._src.protocol.updates import apply_updates

# -- Primitives: one idea of an optimizer each (gradxform/_src/primitives/) --
from gradxform._src.primitives.adam_family import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    ScaleByNadamState,
    scale_by_adam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_radam,
)
from gradxform._src.primitives.adam_variants import (
    ScaleByAdanState,
    ScaleByBeliefState,
    ScaleByYogiState,
    scale_by_adan,
    scale_by_belief,
    scale_by_yogi,
)
from gradxform._src.primitives.adaptive import (
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByStddevState,
    scale_by_rms,
    scale_by_rss,
    scale_by_stddev,
)
from gradxform._src.primitives.clipping import (
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
from gradxform._src.primitives.curvature import (
    SophiaState,
    gauss_newton_bartlett_diagonal,
    hutchinson_diagonal,
    scale_by_sophia,
)
from gradxform._src.primitives.factored import (
    FactoredState,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradxform._src.primitives.moments import (
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
from gradxform._src.primitives.newton_schulz import (
    MuonDimensionNumbers,
    orthogonalize_via_newton_schulz,
)
from gradxform._src.primitives.orthogonal import MuonState, scale_by_muon, scale_by_shape
from gradxform._src.primitives.scaling import (
    CountState,
    add_decayed_weights,
    identity,
    scale,
    scale_by_learning_rate,
    scale_by_sign,
    set_to_zero,
)
from gradxform._src.primitives.sign_momentum import ScaleByLionState, scale_by_lion

# -- Composition: chains, masks, partitions and wrappers (gradxform/_src/composition/) --
from gradxform._src.composition.averaging import (
    EmaParamsState,
    LookaheadState,
    averaged_params,
    ema_params,
    lookahead,
    slow_params,
)
from gradxform._src.composition.combine import chain, get_state, hyperparams, named_chain
from gradxform._src.composition.partitioning import (
    MaskedState,
    PartitionState,
    freeze,
    masked,
    partition,
    selective_transform,
)
from gradxform._src.composition.quantization import (
    QuantizedArray,
    QuantizedState,
    dynamic_map,
    quantize_blockwise,
    quantize_state,
)
from gradxform._src.composition.schedule_free_wrapper import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_eval_params,
)
from gradxform._src.composition.wrappers import (
    ApplyIfFiniteState,
    MultiSteps,
    MultiStepsState,
    apply_if_finite,
    skip_large_updates,
    skip_not_finite,
)

# -- Optimizers: short chains of the primitives (gradxform/_src/presets/) --
from gradxform._src.presets.alias import (
    adabelief,
    adafactor,
    adagrad,
    adam,
    adamax,
    adamw,
    adan,
    amsgrad,
    lion,
    nadam,
    radam,
    rmsprop,
    sgd,
    yogi,
)
from gradxform._src.presets.contrib import muon, schedule_free_adamw, schedule_free_sgd, sophia

# -- Schedules (gradxform/_src/schedules/) --
from gradxform._src.schedules.common import function_schedule
from gradxform._src.schedules.cosine import (
    cosine_annealing_warm_restarts_schedule,
    cosine_decay_schedule,
    sgdr_schedule,
    warmup_cosine_decay_schedule,
)
from gradxform._src.schedules.cyclic import (
    cosine_onecycle_schedule,
    cyclic_lr_schedule,
    linear_onecycle_schedule,
)
from gradxform._src.schedules.exponential import (
    exponential_decay,
    multistep_lr_schedule,
    step_lr_schedule,
    warmup_exponential_decay_schedule,
)
from gradxform._src.schedules.piecewise import (
    join_schedules,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
)
from gradxform._src.schedules.polynomial import (
    constant_schedule,
    linear_schedule,
    polynomial_schedule,
    warmup_constant_schedule,
)
from gradxform._src.schedules.warmup import transformer_schedule, warmup_stable_decay_schedule

# -- Fast training steps and packed trees (gradxform/_src/fast/) --
from gradxform._src.fast.packing import PackedTree, flatten, pack, unpack
from gradxform._src.fast.step import make_step, update_and_apply

# -- Interoperability (gradxform/_src/interop/) --
from gradxform._src.interop.optax_interop import from_optax, to_optax

__version__ = "0.1.0"

__all__ = [
    "ApplyIfFiniteState",
    "ClipByGlobalNormState",
    "CountState",
    "EmaParamsState",
    "ElementwiseTransformation",
    "EmaState",
    "EmptyState",
    "FactoredState",
    "LookaheadState",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MuonDimensionNumbers",
    "MuonState",
    "PackedTree",
    "PartitionState",
    "QuantizedArray",
    "QuantizedState",
    "ScaleByAdamState",
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByStddevState",
    "ScaleByYogiState",
    "Schedule",
    "ScheduleFreeState",
    "SophiaState",
    "TraceState",
    "Transformation",
    "ZeroNansState",
    "adabelief",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "adan",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "amsgrad",
    "apply_if_finite",
    "apply_updates",
    "averaged_params",
    "bias_correction",
    "chain",
    "child",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clear_caches",
    "constant",
    "constant_schedule",
    "cosine_annealing_warm_restarts_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cyclic_lr_schedule",
    "decay_from_half_life",
    "dynamic_map",
    "effective_window",
    "ema",
    "ema_params",
    "exponential_decay",
    "flatten",
    "freeze",
    "from_optax",
    "function_schedule",
    "gauss_newton_bartlett_diagonal",
    "get_state",
    "global_norm",
    "half_life_from_decay",
    "hutchinson_diagonal",
    "hyperparameter",
    "hyperparams",
    "identity",
    "in_interval",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "lion",
    "lookahead",
    "make_step",
    "masked",
    "multistep_lr_schedule",
    "muon",
    "nadam",
    "named_chain",
    "nesterov_lookahead_params",
    "orthogonalize_via_newton_schulz",
    "pack",
    "partition",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "pytree_dataclass",
    "quantize_blockwise",
    "quantize_state",
    "radam",
    "require_params",
    "resolve",
    "rmsprop",
    "safe_increment",
    "scale",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_param_block_rms",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_shape",
    "scale_by_sign",
    "scale_by_sophia",
    "scale_by_stddev",
    "scale_by_yogi",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "selective_transform",
    "set_to_zero",
    "sgd",
    "sgdr_schedule",
    "skip_large_updates",
    "skip_not_finite",
    "slow_params",
    "sophia",
    "static",
    "step_lr_schedule",
    "to_optax",
    "trace",
    "transformer_schedule",
    "unitwise_norm",
    "unpack",
    "update_and_apply",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
    "yogi",
    "zero_nans",
]
