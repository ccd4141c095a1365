"""Learning-rate schedules: a gallery of them and a run showing warmup.

Every schedule is evaluated with `schedule.values(num_steps)`, the curve as one array.
"""

from __future__ import annotations

from gradxform._src.presets.alias import adam
from gradxform.schedules import (
    constant_schedule,
    cosine_annealing_warm_restarts_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    cyclic_lr_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    multistep_lr_schedule,
    polynomial_schedule,
    step_lr_schedule,
    transformer_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_stable_decay_schedule,
)


def three_phase_schedule(peak: float = 0.1, floor: float = 0.01, *, warmup_steps: int = 100,
                         decay_steps: int = 600):
    """Three phases of training: linear warmup, cosine decay, then a constant.

    join_schedules([linear 0 → peak, cosine peak → floor, constant floor],
                   boundaries=[warmup_steps, warmup_steps + decay_steps])
    """
    return join_schedules(
        [
            linear_schedule(0.0, peak, warmup_steps),
            cosine_decay_schedule(peak, decay_steps, alpha=round(floor / peak, 12)),
            constant_schedule(floor),
        ],
        [warmup_steps, warmup_steps + decay_steps],
    )


def schedule_gallery(peak: float = 0.1, total: int = 1000) -> dict[str, dict]:
    """Every kind of schedule, grouped for plotting, each peaking at `peak` within `total` steps.

    Returns {group title: {label: schedule}}.
    """
    t = total
    return {
        "Decays": {
            "constant": constant_schedule(peak),
            "linear": linear_schedule(peak, 0.0, t),
            "polynomial (power 2)": polynomial_schedule(peak, 0.0, 2.0, t),
            "exponential (×0.5 per 200)": exponential_decay(peak, 200, 0.5),
            "step (×0.5 every 250)": step_lr_schedule(peak, 250, 0.5),
            "multistep (×0.1 at 500, 800)": multistep_lr_schedule(peak, (500, 800), 0.1),
            "cosine": cosine_decay_schedule(peak, t),
        },
        "Warmup": {
            "warmup + constant": warmup_constant_schedule(0.0, peak, t // 10),
            "warmup + cosine": warmup_cosine_decay_schedule(0.0, peak, t // 10, t),
            "warmup + cosine + constant": three_phase_schedule(
                peak, peak / 10, warmup_steps=t // 10, decay_steps=6 * t // 10),
            "warmup-stable-decay": warmup_stable_decay_schedule(
                0.0, peak, t // 10, 6 * t // 10, 3 * t // 10),
            "inverse sqrt (Transformer)": transformer_schedule(
                1.0, t // 10, factor=peak * (t // 10) ** 0.5),
        },
        "Restarts (SGDR)": {
            "cosine restarts, T = 250": cosine_annealing_warm_restarts_schedule(
                peak, t // 4, eta_min=peak / 100),
            "cosine restarts, T_0 = 100, T_mult = 2": cosine_annealing_warm_restarts_schedule(
                peak, t // 10, 2, eta_min=peak / 100),
        },
        "Cycles": {
            "cyclic (triangular)": cyclic_lr_schedule(peak / 10, peak, t // 8),
            "one-cycle (cosine)": cosine_onecycle_schedule(t, peak),
            "one-cycle (linear)": linear_onecycle_schedule(t, peak),
        },
    }


def warmup_optimizers(peak: float = 0.3, warmup_steps: int = 100, total_steps: int = 500) -> dict:
    """Adam at a large learning rate: constant from the first step, after a linear warmup, and
    after a warmup followed by a cosine decay to peak/100 at `total_steps`."""
    return {
        "constant η": adam(peak),
        "warmup, then constant": adam(warmup_constant_schedule(0.0, peak, warmup_steps)),
        "warmup, then cosine decay": adam(
            warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps, end_value=peak / 100)
        ),
    }
