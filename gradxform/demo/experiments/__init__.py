"""Classic optimizer experiments, run with gradxform.

Written once and used twice: by the notebooks in `notebooks/` and by `python -m gradxform demo`.
Each experiment is a pure function of its optimizer and a PRNG key that returns numpy arrays;
`gradxform.experiments.plotting` draws them (matplotlib is imported only there, and only when
a figure is asked for).

- `rosenbrock`: SGD, momentum, RMSprop and Adam on the Rosenbrock function from (-0.5, 0.5),
  500 steps, as a numpy comparison of them runs it, and the other classics beside them.
- `xor`: XOR classification with a 2-16-16-1 MLP, trained with five torch.optim optimizers.
- `noisy_features`: a regression with uninformative, high-variance features, where coupled L2
  in Adam and AdamW's decoupled weight decay part ways.
- `schedules`: every learning-rate schedule, a three-phase schedule (warmup, cosine decay,
  constant), and what warmup does to Adam's first steps.
"""

from gradxform.demo.experiments.common import float64, format_table
from gradxform.demo.experiments.noisy_features import (
    NoisyFeatures,
    RegressionRun,
    noisy_features_data,
    run_noisy_features,
    train_regression,
    weight_decay_optimizers,
)
from gradxform.demo.experiments.rosenbrock import (
    MINIMUM,
    START,
    Trajectory,
    classic_optimizers,
    rosenbrock,
    run_rosenbrock,
    tour_optimizers,
)
from gradxform.demo.experiments.schedules import (
    schedule_gallery,
    three_phase_schedule,
    warmup_optimizers,
)
from gradxform.demo.experiments.xor import (
    XorRun,
    init_mlp,
    mlp_logits,
    train_xor,
    xor_data,
    xor_loss_per_step,
    xor_optimizers,
)

__all__ = [
    "MINIMUM",
    "START",
    "NoisyFeatures",
    "RegressionRun",
    "Trajectory",
    "XorRun",
    "float64",
    "format_table",
    "init_mlp",
    "mlp_logits",
    "noisy_features_data",
    "run_noisy_features",
    "rosenbrock",
    "run_rosenbrock",
    "schedule_gallery",
    "classic_optimizers",
    "three_phase_schedule",
    "tour_optimizers",
    "train_regression",
    "train_xor",
    "warmup_optimizers",
    "weight_decay_optimizers",
    "xor_data",
    "xor_loss_per_step",
    "xor_optimizers",
]
