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

# -- optax's names: the protocol's types, hyperparameters in the state (optax compatibility) --
from gradxform._src.protocol.transformation import (  # noqa: I001
    GradientTransformation,
    GradientTransformationExtraArgs,
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
    unitwise_clip,
    unitwise_norm,
    zero_nans,
)
from gradxform._src.primitives.cover_statistics import ScaleBySM3State, scale_by_sm3
from gradxform._src.primitives.curvature import (
    SophiaState,
    gauss_newton_bartlett_diagonal,
    hutchinson_diagonal,
    scale_by_sophia,
)
from gradxform._src.primitives.distance_over_gradients import (
    ScaleByDistanceOverGradientsState,
    scale_by_distance_over_gradients,
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
from gradxform._src.primitives.normalizing import centralize, normalize_by_update_norm
from gradxform._src.primitives.orthogonal import MuonState, scale_by_muon, scale_by_shape
from gradxform._src.primitives.polyak import scale_by_polyak
from gradxform._src.primitives.plateau import (
    ReduceLROnPlateauState,
    reduce_lr_on_plateau,
    reduce_on_plateau,
)
from gradxform._src.primitives.scaling import (
    CountState,
    add_decayed_weights,
    identity,
    negate,
    scale,
    scale_by_learning_rate,
    scale_by_sign,
    set_to_zero,
)
from gradxform._src.primitives.sign_momentum import ScaleByLionState, scale_by_lion
from gradxform._src.primitives.constraints import keep_params_nonnegative
from gradxform._src.primitives.layerwise import ScaleByNovogradState, scale_by_novograd
from gradxform._src.primitives.noise import AddNoiseState, add_noise
from gradxform._src.primitives.optimistic import (
    ScaleByOptimisticGradientState,
    scale_by_optimistic_gradient,
)
from gradxform._src.primitives.trust_ratio import (
    scale_and_shrink,
    scale_by_param_block_norm,
    scale_by_trust_ratio,
)
from gradxform._src.primitives.step_adaptation import (
    ScaleByAdaDeltaState,
    ScaleByRpropState,
    scale_by_adadelta,
    scale_by_rprop,
)

# -- optax's function-made transformations (optax compatibility) --
from gradxform._src.primitives.functions import stateless, stateless_with_tree_map  # noqa: I001

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
from gradxform._src.composition.iterate_averaging import (
    PolyakAveragingState,
    SwaParamsState,
    polyak_averaging,
    swa_params,
)
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
from gradxform._src.composition.conditional import (
    ConditionallyMaskState,
    ConditionallyTransformState,
    conditionally_mask,
    conditionally_transform,
)
from gradxform._src.composition.injection import (
    InjectHyperparamsState,
    inject_hyperparams,
    multi_transform,
    scale_by_schedule,
)
from gradxform._src.composition.monitoring import (
    MonitorState,
    SnapshotState,
    measure_with_ema,
    monitor,
    snapshot,
)
from gradxform._src.composition.wrappers import (
    ApplyEvery,
    ApplyIfFiniteState,
    MultiSteps,
    MultiStepsState,
    apply_every,
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
    fromage,
    lamb,
    lars,
    lion,
    nadam,
    polyak_sgd,
    radam,
    rmsprop,
    sgd,
    sm3,
    yogi,
)
from gradxform._src.presets.alias import (
    adamaxw,
    nadamw,
    noisy_sgd,
    novograd,
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    sign_sgd,
    signum,
)
from gradxform._src.presets.step_adaptation_presets import adadelta, rprop
from gradxform._src.presets.contrib import muon, schedule_free_adamw, schedule_free_sgd, sophia
from gradxform._src.presets.torch_forms import adafactor_torch, asgd

# -- Full-batch optimisation: L-BFGS, line searches and the one-call solver --
from gradxform._src.presets.alias import lbfgs
from gradxform._src.primitives.linesearch import (
    BacktrackingLinesearchInfo,
    ScaleByBacktrackingLinesearchState,
    scale_by_backtracking_linesearch,
    value_and_grad_from_state,
)
from gradxform._src.primitives.quasi_newton import ScaleByLBFGSState, scale_by_lbfgs
from gradxform._src.primitives.zoom import (
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    scale_by_zoom_linesearch,
)
from gradxform._src.solvers.full_batch import MinimizeResult, MinimizeStatus, minimize
# -- Beyond optax and torch: C-AdamW and MARS (2024) --
from gradxform._src.composition.cautious_masking import cautious
from gradxform._src.presets.variance_and_caution import cadamw, mars
from gradxform._src.primitives.transformers_adam import (
    ScaleByAdamTransformersState,
    scale_by_adam_transformers,
)
from gradxform._src.primitives.variance_reduction import ScaleByMarsState, scale_by_mars

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
from gradxform._src.schedules.swa_annealing import swa_lr_schedule
from gradxform._src.schedules.torch_lr_scheduler import (
    asgd_schedule,
    multiply_schedules,
    onecycle_lr_schedule,
    onecycle_momentum_schedule,
    onecycle_schedules,
    periodic_cosine_annealing_schedule,
    relative_step_schedule,
)
from gradxform._src.schedules.warmup import transformer_schedule, warmup_stable_decay_schedule

# -- Slow copies of the params, also in gradxform.tree_utils (gradxform/_src/trees/) --
from gradxform._src.trees.tree_math import incremental_update, periodic_update

# -- Fast training steps and packed trees (gradxform/_src/fast/) --
from gradxform._src.fast.packing import PackedTree, flatten, pack, unpack
from gradxform._src.fast.step import make_step, update_and_apply

# -- Interoperability (gradxform/_src/interop/) --
from gradxform._src.interop.optax_interop import from_optax, to_optax

# -- Placing optimizer state on a mesh, also in gradxform.sharding (gradxform/_src/interop/) --
from gradxform._src.interop.sharding import state_shardings

# -- optax's remaining utilities: numerics, moment updates, linear algebra, extra args --
from gradxform._src.protocol.transformation import (  # noqa: I001
    init_empty_state,
    safe_int32_increment,
    with_extra_args_support,
)
from gradxform._src.trees.distributions import multi_normal
from gradxform._src.trees.linear_algebra import matrix_inverse_pth_root, nnls, power_iteration
from gradxform._src.trees.moment_updates import (
    tree_update_infinity_moment as update_infinity_moment,
    tree_update_moment as update_moment,
    tree_update_moment_per_elem_norm as update_moment_per_elem_norm,
)
from gradxform._src.trees.numerics import safe_norm, safe_root_mean_squares, scale_gradient
from gradxform._src.composition.microbatching import microbatch  # noqa: I001

__version__ = "0.1.0"

__all__ = [
    # optax's remaining utilities: numerics, moment updates, linear algebra, extra args
    "init_empty_state",
    "matrix_inverse_pth_root",
    "microbatch",
    "multi_normal",
    "nnls",
    "power_iteration",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
    "scale_gradient",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "with_extra_args_support",
    # beyond optax and torch: C-AdamW and MARS (2024)
    "ScaleByAdamTransformersState",
    "ScaleByMarsState",
    "cadamw",
    "cautious",
    "mars",
    "scale_by_adam_transformers",
    "scale_by_mars",
    # optax's names for the protocol's types and for hyperparameters kept in the state
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "InjectHyperparamsState",
    "inject_hyperparams",
    "multi_transform",
    "scale_by_schedule",
    # optax's wrappers and utilities
    "ApplyEvery",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "MonitorState",
    "SnapshotState",
    "apply_every",
    "conditionally_mask",
    "conditionally_transform",
    "measure_with_ema",
    "monitor",
    "snapshot",
    "stateless",
    "stateless_with_tree_map",
    # placing optimizer state on a device mesh
    "state_shardings",
    # everything else
    "AddNoiseState",
    "ApplyIfFiniteState",
    "BacktrackingLinesearchInfo",
    "ClipByGlobalNormState",
    "CountState",
    "EmaParamsState",
    "ElementwiseTransformation",
    "EmaState",
    "EmptyState",
    "FactoredState",
    "LookaheadState",
    "MaskedState",
    "MinimizeResult",
    "MinimizeStatus",
    "MultiSteps",
    "MultiStepsState",
    "MuonDimensionNumbers",
    "MuonState",
    "PackedTree",
    "PartitionState",
    "PolyakAveragingState",
    "QuantizedArray",
    "QuantizedState",
    "ReduceLROnPlateauState",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByBeliefState",
    "ScaleByLBFGSState",
    "ScaleByDistanceOverGradientsState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleByRmsState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleBySM3State",
    "ScaleByStddevState",
    "ScaleByYogiState",
    "ScaleByZoomLinesearchState",
    "Schedule",
    "ScheduleFreeState",
    "SophiaState",
    "SwaParamsState",
    "TraceState",
    "Transformation",
    "ZeroNansState",
    "ZoomLinesearchInfo",
    "adabelief",
    "adadelta",
    "adafactor",
    "adafactor_torch",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_noise",
    "amsgrad",
    "apply_if_finite",
    "apply_updates",
    "asgd",
    "asgd_schedule",
    "averaged_params",
    "bias_correction",
    "centralize",
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
    "fromage",
    "function_schedule",
    "gauss_newton_bartlett_diagonal",
    "get_state",
    "global_norm",
    "half_life_from_decay",
    "hutchinson_diagonal",
    "hyperparameter",
    "hyperparams",
    "identity",
    "incremental_update",
    "in_interval",
    "join_schedules",
    "lbfgs",
    "keep_params_nonnegative",
    "lamb",
    "lars",
    "linear_onecycle_schedule",
    "linear_schedule",
    "lion",
    "lookahead",
    "make_step",
    "masked",
    "minimize",
    "multiply_schedules",
    "multistep_lr_schedule",
    "muon",
    "nadam",
    "nadamw",
    "named_chain",
    "negate",
    "nesterov_lookahead_params",
    "noisy_sgd",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "normalize_by_update_norm",
    "onecycle_lr_schedule",
    "onecycle_momentum_schedule",
    "onecycle_schedules",
    "orthogonalize_via_newton_schulz",
    "pack",
    "partition",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "periodic_cosine_annealing_schedule",
    "periodic_update",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polyak_sgd",
    "polyak_averaging",
    "polynomial_schedule",
    "pytree_dataclass",
    "quantize_blockwise",
    "quantize_state",
    "radam",
    "reduce_lr_on_plateau",
    "reduce_on_plateau",
    "relative_step_schedule",
    "require_params",
    "resolve",
    "rmsprop",
    "rprop",
    "safe_increment",
    "scale",
    "scale_and_shrink",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_backtracking_linesearch",
    "scale_by_belief",
    "scale_by_distance_over_gradients",
    "scale_by_factored_rms",
    "scale_by_lbfgs",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_shape",
    "scale_by_sign",
    "scale_by_sm3",
    "scale_by_sophia",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "scale_by_zoom_linesearch",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "selective_transform",
    "set_to_zero",
    "sgd",
    "sgdr_schedule",
    "sign_sgd",
    "signum",
    "skip_large_updates",
    "skip_not_finite",
    "slow_params",
    "sm3",
    "sophia",
    "static",
    "step_lr_schedule",
    "swa_lr_schedule",
    "swa_params",
    "to_optax",
    "trace",
    "transformer_schedule",
    "unitwise_clip",
    "unitwise_norm",
    "unpack",
    "update_and_apply",
    "value_and_grad_from_state",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
    "yogi",
    "zero_nans",
]

# -- Public submodules: attributes of the package once it is imported, as optax's are
# (`gx.tree_utils.tree_norm`, `gx.contrib.adopt`, `gx.schedules.cosine_decay_schedule`). They are
# modules, not names of __all__. --
from gradxform import (  # noqa: E402
    checkpoint,
    contrib,
    microbatching,
    projections,
    schedules,
    sharding,
    testing,
    tree,
    tree_utils,
)
