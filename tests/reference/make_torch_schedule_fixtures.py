"""Records torch.optim.lr_scheduler learning rates that tests/test_schedules.py compares against.

Run `python tests/reference/make_torch_schedule_fixtures.py` (needs `pip install -e
".[reference]"`) to rewrite `torch_schedule_fixtures.json` next to this file. The tests read only
that file, so they run without torch.

Each case steps one torch scheduler the way a training loop does (`optimizer.step()` then
`scheduler.step()`) and records `param_groups[0]["lr"]` (and, for the schedulers that cycle it,
SGD's `momentum`) before each step: entry t is the learning
rate of update t, which is what a gradxform schedule gives at step count t. Values are torch's
float64 Python numbers. Every case also names the gradxform schedule and arguments meant to
reproduce it, as strings, so this script needs only torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.optim import lr_scheduler as L

HERE = Path(__file__).resolve().parent
OUT = HERE / "torch_schedule_fixtures.json"
PLATEAU_OUT = HERE / "torch_plateau_fixtures.json"


def _half_sine(x):
    """torch's CyclicLR documentation example of a custom `scale_fn`."""
    return 0.5 * (1 + math.sin(x * math.pi / 2))


def _wsd_linear(opt, warmup, stable, decay, start_factor, end_factor):
    return L.SequentialLR(opt, [
        L.LinearLR(opt, start_factor=start_factor, end_factor=1.0, total_iters=warmup),
        L.ConstantLR(opt, factor=1.0, total_iters=stable),
        L.LinearLR(opt, start_factor=1.0, end_factor=end_factor, total_iters=decay),
    ], milestones=[warmup, warmup + stable])


def _wsd_cosine(opt, warmup, stable, decay, start_factor, eta_min):
    return L.SequentialLR(opt, [
        L.LinearLR(opt, start_factor=start_factor, end_factor=1.0, total_iters=warmup),
        L.ConstantLR(opt, factor=1.0, total_iters=stable),
        L.CosineAnnealingLR(opt, T_max=decay, eta_min=eta_min),
    ], milestones=[warmup, warmup + stable])


# name -> (base lr, torch scheduler factory, its description, number of steps,
#          gradxform schedule name, its arguments)
CASES = {
    "StepLR": (
        0.1, lambda o: L.StepLR(o, step_size=30, gamma=0.1), "StepLR(step_size=30, gamma=0.1)",
        200, "step_lr_schedule", dict(init_value=0.1, step_size=30, gamma=0.1),
    ),
    "StepLR_gamma_half": (
        0.05, lambda o: L.StepLR(o, step_size=7, gamma=0.5), "StepLR(step_size=7, gamma=0.5)",
        120, "step_lr_schedule", dict(init_value=0.05, step_size=7, gamma=0.5),
    ),
    "MultiStepLR": (
        0.1, lambda o: L.MultiStepLR(o, milestones=[30, 80, 120], gamma=0.1),
        "MultiStepLR(milestones=[30, 80, 120], gamma=0.1)",
        200, "multistep_lr_schedule", dict(init_value=0.1, milestones=[30, 80, 120], gamma=0.1),
    ),
    "MultiStepLR_repeated_milestone": (
        1.0, lambda o: L.MultiStepLR(o, milestones=[10, 25, 25, 40], gamma=0.5),
        "MultiStepLR(milestones=[10, 25, 25, 40], gamma=0.5)",
        60, "multistep_lr_schedule",
        dict(init_value=1.0, milestones=[10, 25, 25, 40], gamma=0.5),
    ),
    "ExponentialLR": (
        0.1, lambda o: L.ExponentialLR(o, gamma=0.97), "ExponentialLR(gamma=0.97)",
        200, "exponential_decay", dict(init_value=0.1, transition_steps=1, decay_rate=0.97),
    ),
    "CyclicLR_triangular": (
        0.001, lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.006, step_size_up=20,
                                    cycle_momentum=False),
        "CyclicLR(base_lr=0.001, max_lr=0.006, step_size_up=20)",
        250, "cyclic_lr_schedule", dict(base_lr=0.001, max_lr=0.006, step_size_up=20),
    ),
    "CyclicLR_triangular2": (
        0.001, lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=10,
                                    step_size_down=15, mode="triangular2",
                                    cycle_momentum=False),
        "CyclicLR(base_lr=0.001, max_lr=0.01, step_size_up=10, step_size_down=15, "
        "mode='triangular2')",
        250, "cyclic_lr_schedule",
        dict(base_lr=0.001, max_lr=0.01, step_size_up=10, step_size_down=15, mode="triangular2"),
    ),
    "CyclicLR_exp_range": (
        0.001, lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=12,
                                    step_size_down=8, mode="exp_range", gamma=0.995,
                                    cycle_momentum=False),
        "CyclicLR(base_lr=0.001, max_lr=0.01, step_size_up=12, step_size_down=8, "
        "mode='exp_range', gamma=0.995)",
        250, "cyclic_lr_schedule",
        dict(base_lr=0.001, max_lr=0.01, step_size_up=12, step_size_down=8, mode="exp_range",
             gamma=0.995),
    ),
    "CyclicLR_half_sine_scale_fn": (
        0.001, lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.01, step_size_up=9,
                                    scale_fn=_half_sine, scale_mode="cycle",
                                    cycle_momentum=False),
        "CyclicLR(base_lr=0.001, max_lr=0.01, step_size_up=9, "
        "scale_fn=lambda x: 0.5 * (1 + sin(x * pi / 2)), scale_mode='cycle')",
        150, "cyclic_lr_schedule",
        dict(base_lr=0.001, max_lr=0.01, step_size_up=9, scale_fn="half_sine",
             scale_mode="cycle"),
    ),
    "CosineAnnealingWarmRestarts": (
        0.1, lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10, eta_min=0.001),
        "CosineAnnealingWarmRestarts(T_0=10, eta_min=0.001)",
        200, "cosine_annealing_warm_restarts_schedule",
        dict(init_value=0.1, T_0=10, eta_min=0.001),
    ),
    "CosineAnnealingWarmRestarts_T_mult_2": (
        0.1, lambda o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2),
        "CosineAnnealingWarmRestarts(T_0=5, T_mult=2)",
        400, "cosine_annealing_warm_restarts_schedule", dict(init_value=0.1, T_0=5, T_mult=2),
    ),
    "CosineAnnealingWarmRestarts_T_mult_3": (
        0.05, lambda o: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=3, eta_min=1e-4),
        "CosineAnnealingWarmRestarts(T_0=3, T_mult=3, eta_min=1e-4)",
        400, "cosine_annealing_warm_restarts_schedule",
        dict(init_value=0.05, T_0=3, T_mult=3, eta_min=1e-4),
    ),
    # warmup-stable-decay has no torch class; torch users build it from three schedulers.
    "WSD_linear_SequentialLR": (
        0.01, lambda o: _wsd_linear(o, 20, 50, 30, start_factor=0.01, end_factor=0.1),
        "SequentialLR([LinearLR(start_factor=0.01, total_iters=20), ConstantLR(factor=1.0, "
        "total_iters=50), LinearLR(start_factor=1.0, end_factor=0.1, total_iters=30)], "
        "milestones=[20, 70])",
        130, "warmup_stable_decay_schedule",
        dict(init_value=0.0001, peak_value=0.01, warmup_steps=20, stable_steps=50,
             decay_steps=30, end_value=0.001, decay_type="linear"),
    ),
    # CosineAnnealingLR rises again after T_max, so the record stops at the end of the decay.
    "WSD_cosine_SequentialLR": (
        0.01, lambda o: _wsd_cosine(o, 20, 50, 30, start_factor=0.01, eta_min=0.001),
        "SequentialLR([LinearLR(start_factor=0.01, total_iters=20), ConstantLR(factor=1.0, "
        "total_iters=50), CosineAnnealingLR(T_max=30, eta_min=0.001)], milestones=[20, 70])",
        101, "warmup_stable_decay_schedule",
        dict(init_value=0.0001, peak_value=0.01, warmup_steps=20, stable_steps=50,
             decay_steps=30, end_value=0.001, decay_type="cosine"),
    ),
}


def _nested(schedule, **args):
    """A gradxform schedule given as an argument of another, as the test builds it."""
    return {"schedule": schedule, "args": args}


# Cases whose scheduler also cycles SGD's momentum: name -> (base lr, factory, description,
# steps, lr schedule, its arguments, momentum schedule, its arguments). Arguments that are
# schedules themselves are `_nested(...)`.
MOMENTUM_CASES = {
    "OneCycleLR": (
        0.1, lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=100),
        "OneCycleLR(max_lr=0.1, total_steps=100)",
        100, "onecycle_lr_schedule", dict(max_lr=0.1, total_steps=100),
        "onecycle_momentum_schedule", dict(total_steps=100),
    ),
    # pct_start T - 1 = 28.1 and 2 pct_start T - 2 = 56.2: phase ends between whole steps
    "OneCycleLR_three_phase": (
        0.1, lambda o: L.OneCycleLR(o, max_lr=0.2, total_steps=97, three_phase=True,
                                    base_momentum=0.8, max_momentum=0.9),
        "OneCycleLR(max_lr=0.2, total_steps=97, three_phase=True, base_momentum=0.8, "
        "max_momentum=0.9)",
        97, "onecycle_lr_schedule", dict(max_lr=0.2, total_steps=97, three_phase=True),
        "onecycle_momentum_schedule",
        dict(total_steps=97, three_phase=True, base_momentum=0.8, max_momentum=0.9),
    ),
    "OneCycleLR_linear": (
        0.1, lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=120, pct_start=0.25,
                                    anneal_strategy="linear", div_factor=10.0,
                                    final_div_factor=100.0),
        "OneCycleLR(max_lr=0.05, total_steps=120, pct_start=0.25, anneal_strategy='linear', "
        "div_factor=10.0, final_div_factor=100.0)",
        120, "onecycle_lr_schedule",
        dict(max_lr=0.05, total_steps=120, pct_start=0.25, anneal_strategy="linear",
             div_factor=10.0, final_div_factor=100.0),
        "onecycle_momentum_schedule",
        dict(total_steps=120, pct_start=0.25, anneal_strategy="linear"),
    ),
    "OneCycleLR_linear_three_phase": (
        0.1, lambda o: L.OneCycleLR(o, max_lr=0.3, total_steps=150, pct_start=0.2,
                                    anneal_strategy="linear", three_phase=True),
        "OneCycleLR(max_lr=0.3, total_steps=150, pct_start=0.2, anneal_strategy='linear', "
        "three_phase=True)",
        150, "onecycle_lr_schedule",
        dict(max_lr=0.3, total_steps=150, pct_start=0.2, anneal_strategy="linear",
             three_phase=True),
        "onecycle_momentum_schedule",
        dict(total_steps=150, pct_start=0.2, anneal_strategy="linear", three_phase=True),
    ),
    # torch's cycled momentum is the lr's triangle upside down: base and max swapped
    "CyclicLR_cycle_momentum": (
        0.001, lambda o: L.CyclicLR(o, base_lr=0.001, max_lr=0.006, step_size_up=15,
                                    step_size_down=10, base_momentum=0.8, max_momentum=0.9),
        "CyclicLR(base_lr=0.001, max_lr=0.006, step_size_up=15, step_size_down=10, "
        "base_momentum=0.8, max_momentum=0.9)",
        120, "cyclic_lr_schedule",
        dict(base_lr=0.001, max_lr=0.006, step_size_up=15, step_size_down=10),
        "cyclic_lr_schedule",
        dict(base_lr=0.9, max_lr=0.8, step_size_up=15, step_size_down=10),
    ),
}

CASES.update({
    # CosineAnnealingLR keeps going past T_max: up again to the base lr at 2 T_max
    "CosineAnnealingLR_periodic": (
        0.1, lambda o: L.CosineAnnealingLR(o, T_max=20, eta_min=0.001),
        "CosineAnnealingLR(T_max=20, eta_min=0.001)",
        130, "periodic_cosine_annealing_schedule",
        dict(init_value=0.1, T_max=20, eta_min=0.001),
    ),
    "MultiplicativeLR_constant_factor": (
        0.1, lambda o: L.MultiplicativeLR(o, lr_lambda=lambda epoch: 0.95),
        "MultiplicativeLR(lr_lambda=lambda epoch: 0.95)",
        100, "exponential_decay", dict(init_value=0.1, transition_steps=1, decay_rate=0.95),
    ),
    "ConstantLR": (
        0.1, lambda o: L.ConstantLR(o, factor=0.25, total_iters=12),
        "ConstantLR(factor=0.25, total_iters=12)",
        40, "piecewise_constant_schedule",
        dict(init_value=0.025, boundaries_and_scales={12: 4.0}),
    ),
    "LinearLR": (
        0.1, lambda o: L.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=30),
        "LinearLR(start_factor=0.1, end_factor=0.9, total_iters=30)",
        60, "linear_schedule", dict(init_value=0.01, end_value=0.09, transition_steps=30),
    ),
    "PolynomialLR": (
        0.1, lambda o: L.PolynomialLR(o, total_iters=40, power=2.0),
        "PolynomialLR(total_iters=40, power=2.0)",
        60, "polynomial_schedule",
        dict(init_value=0.1, end_value=0.0, power=2.0, transition_steps=40),
    ),
    "ChainedScheduler": (
        0.1, lambda o: L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=10),
                                           L.ExponentialLR(o, gamma=0.97)]),
        "ChainedScheduler([ConstantLR(factor=0.5, total_iters=10), ExponentialLR(gamma=0.97)])",
        80, "multiply_schedules",
        dict(schedules=[
            _nested("piecewise_constant_schedule", init_value=0.05,
                    boundaries_and_scales={10: 2.0}),
            _nested("exponential_decay", init_value=1.0, transition_steps=1, decay_rate=0.97),
        ]),
    ),
    "SWALR_cos": (
        0.1, lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=0.01, anneal_epochs=15),
        "swa_utils.SWALR(swa_lr=0.01, anneal_epochs=15)",
        40, "swa_lr_schedule", dict(init_value=0.1, swa_lr=0.01, anneal_epochs=15),
    ),
    "SWALR_linear": (
        0.05, lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=0.2, anneal_epochs=8,
                                                    anneal_strategy="linear"),
        "swa_utils.SWALR(swa_lr=0.2, anneal_epochs=8, anneal_strategy='linear')",
        30, "swa_lr_schedule",
        dict(init_value=0.05, swa_lr=0.2, anneal_epochs=8, anneal_strategy="linear"),
    ),
})


def _metrics(kind: str, n: int = 120) -> list[float]:
    """A metric that improves, stalls with noise, improves again: float32 numbers, so that
    both sides compare the same values."""
    rng = np.random.default_rng(7)
    t = np.arange(n)
    trend = np.where(t < 30, 1.0 / (1 + 0.1 * t), 0.25) - np.where(t > 70, 0.002 * (t - 70), 0)
    noisy = trend + 0.01 * rng.standard_normal(n)
    values = noisy if kind == "loss" else 1.0 - noisy  # an accuracy rises
    return [float(np.float32(v)) for v in values]


# name -> (base lr, ReduceLROnPlateau keyword arguments, metric kind)
PLATEAU_CASES = {
    "min_rel_cooldown_min_lr": (0.1, dict(factor=0.5, patience=3, cooldown=2, min_lr=0.01),
                                "loss"),
    "max_abs": (0.1, dict(mode="max", factor=0.3, patience=4, threshold=0.005,
                          threshold_mode="abs"), "accuracy"),
    "eps_stops_the_cuts": (1e-3, dict(factor=0.5, patience=1, eps=1e-4), "loss"),
    "defaults": (0.1, dict(), "loss"),
}


def record_plateau(base_lr, kwargs, values) -> list[float]:
    """The learning rate after each `scheduler.step(value)`."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=base_lr)
    scheduler = L.ReduceLROnPlateau(opt, **kwargs)
    lrs = []
    for v in values:
        opt.step()
        scheduler.step(v)
        lrs.append(float(opt.param_groups[0]["lr"]))
    return lrs


def record(base_lr, make_scheduler, num_steps) -> tuple[list[float], list[float]]:
    """The learning rate and SGD's momentum before each step."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    scheduler = make_scheduler(opt)
    lrs, momenta = [], []
    for _ in range(num_steps):
        lrs.append(float(opt.param_groups[0]["lr"]))
        momenta.append(float(opt.param_groups[0]["momentum"]))
        opt.step()
        scheduler.step()
    return lrs, momenta


def _json_args(args):
    """Arguments as JSON: integer dict keys (boundaries) become strings, the test reverses it."""
    if isinstance(args, dict):
        return {str(k): _json_args(v) for k, v in args.items()}
    if isinstance(args, list):
        return [_json_args(v) for v in args]
    return args


def main() -> None:
    cases = {}
    for name, (base_lr, make, description, n, schedule, args) in CASES.items():
        cases[name] = {
            "torch": description,
            "base_lr": base_lr,
            "schedule": schedule,
            "args": _json_args(args),
            "lr": record(base_lr, make, n)[0],
        }
    for name, (base_lr, make, description, n, schedule, args, m_schedule,
               m_args) in MOMENTUM_CASES.items():
        lrs, momenta = record(base_lr, make, n)
        cases[name] = {
            "torch": description,
            "base_lr": base_lr,
            "schedule": schedule,
            "args": _json_args(args),
            "lr": lrs,
            "momentum_schedule": m_schedule,
            "momentum_args": _json_args(m_args),
            "momentum": momenta,
        }
    lines = [f" {json.dumps(name)}: {json.dumps(case)}" for name, case in cases.items()]
    OUT.write_text(f'{{"torch_version": {json.dumps(torch.__version__)}, "cases": {{\n'
                   + ",\n".join(lines) + "\n}}\n")
    print(f"wrote {OUT} ({len(cases)} cases)")
    plateau = {}
    for name, (base_lr, kwargs, kind) in PLATEAU_CASES.items():
        values = _metrics(kind)
        plateau[name] = {"base_lr": base_lr, "kwargs": kwargs, "values": values,
                         "lr": record_plateau(base_lr, kwargs, values)}
    PLATEAU_OUT.write_text(json.dumps({"torch_version": torch.__version__,
                                       "cases": plateau}) + "\n")
    print(f"wrote {PLATEAU_OUT} ({len(plateau)} cases)")


if __name__ == "__main__":
    main()
