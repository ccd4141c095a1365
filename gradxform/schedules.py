"""Learning-rate schedules (also exported from `gradxform`), and `plot` to draw them.

Schedules map the step count to a hyperparameter's value.

A schedule is a frozen pytree dataclass like a transformation: its numbers are leaves (changing
one reuses the compiled step, `jax.vmap` over them sweeps), its repr is the recipe, and
`schedule(count)` works under jit and vmap. Any numeric hyperparameter of any transformation
accepts one; it is evaluated at the transformation's own step count before that count is
incremented (as in optax), so the first update uses `schedule(0)`.

optax's schedules keep optax's names, arguments and values; the torch.optim.lr_scheduler forms
optax lacks (`StepLR`, `MultiStepLR`, `CyclicLR`, `CosineAnnealingWarmRestarts`, `OneCycleLR`
with its momentum, `CosineAnnealingLR` past T_max, `ChainedScheduler`, SWA's `SWALR`) and the
Transformer and warmup-stable-decay schedules are here under the names below.
`schedule.values(num_steps)` is the curve as an array and `plot(*schedules, num_steps=...)` draws
it with matplotlib.
"""

from gradxform._src.composition.injection import InjectHyperparamsState, inject_hyperparams
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
from gradxform._src.schedules.plot import plot
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

__all__ = [
    "InjectHyperparamsState",
    "asgd_schedule",
    "constant_schedule",
    "cosine_annealing_warm_restarts_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cyclic_lr_schedule",
    "exponential_decay",
    "function_schedule",
    "inject_hyperparams",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "multiply_schedules",
    "multistep_lr_schedule",
    "onecycle_lr_schedule",
    "onecycle_momentum_schedule",
    "onecycle_schedules",
    "periodic_cosine_annealing_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "plot",
    "polynomial_schedule",
    "relative_step_schedule",
    "sgdr_schedule",
    "step_lr_schedule",
    "swa_lr_schedule",
    "transformer_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
]
