"""Optimizers from recent papers under optax.contrib's names: `optax.contrib.X` is
`gradxform.contrib.X`, with optax's arguments and numbers.

    import gradxform as gx
    opt = gx.contrib.adopt(1e-3)

What gradxform also exports at top level (`muon`, `sophia`, `schedule_free_*`, ...) is the same
object here. The implementations live with the rest of the library: primitives in
`gradxform/_src/primitives/` by concept, the optimizers (short chains of them) in
`gradxform/_src/presets/contrib.py`.
"""

from gradxform._src.composition.complex_split import (
    SplitRealAndImaginaryState,
    split_real_and_imaginary,
)
from gradxform._src.composition.mechanic import MechanicState, mechanize
from gradxform._src.composition.schedule_free_wrapper import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_eval_params,
)
from gradxform._src.composition.sharpness import SAMState, sam
from gradxform._src.presets.contrib import (
    acprop,
    ademamix,
    adopt,
    cocob,
    dog,
    dowg,
    dpsgd,
    madgrad,
    muon,
    schedule_free_adamw,
    schedule_free_sgd,
    simplified_ademamix,
    sophia,
)
from gradxform._src.primitives.asynchronous_moments import scale_by_acprop, scale_by_adopt
from gradxform._src.primitives.coin_betting import COCOBState, scale_by_cocob
from gradxform._src.primitives.curvature import SophiaState
from gradxform._src.primitives.distance_estimation import (
    DAdaptAdamWState,
    ProdigyState,
    dadapt_adamw,
    prodigy,
)
from gradxform._src.primitives.distance_over_gradients import (
    DoGState,
    DoWGState,
    scale_by_dog,
    scale_by_dowg,
)
from gradxform._src.primitives.dual_averaging import MadgradState, scale_by_madgrad
from gradxform._src.primitives.newton_schulz import MuonDimensionNumbers
from gradxform._src.primitives.normalization import NormalizeState, normalize
from gradxform._src.primitives.orthogonal import MuonState, scale_by_muon
from gradxform._src.primitives.plateau import ReduceLROnPlateauState, reduce_on_plateau
from gradxform._src.primitives.polyak_momentum import (
    MomoAdamState,
    MomoState,
    momo,
    momo_adam,
)
from gradxform._src.primitives.privacy_noise import (
    DifferentiallyPrivateAggregateState,
    differentially_private_aggregate,
)
from gradxform._src.primitives.slow_momentum import (
    ScaleByAdemamixState,
    ScaleBySimplifiedAdEMAMixState,
    scale_by_ademamix,
    scale_by_simplified_ademamix,
)

__all__ = [
    "COCOBState",
    "DAdaptAdamWState",
    "DifferentiallyPrivateAggregateState",
    "DoGState",
    "DoWGState",
    "MadgradState",
    "MechanicState",
    "MomoAdamState",
    "MomoState",
    "MuonDimensionNumbers",
    "MuonState",
    "NormalizeState",
    "ProdigyState",
    "ReduceLROnPlateauState",
    "SAMState",
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdEMAMixState",
    "ScheduleFreeState",
    "SophiaState",
    "SplitRealAndImaginaryState",
    "acprop",
    "ademamix",
    "adopt",
    "cocob",
    "dadapt_adamw",
    "differentially_private_aggregate",
    "dog",
    "dowg",
    "dpsgd",
    "madgrad",
    "mechanize",
    "momo",
    "momo_adam",
    "muon",
    "normalize",
    "prodigy",
    "reduce_on_plateau",
    "sam",
    "scale_by_acprop",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_cocob",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_madgrad",
    "scale_by_muon",
    "scale_by_simplified_ademamix",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "simplified_ademamix",
    "sophia",
    "split_real_and_imaginary",
]
