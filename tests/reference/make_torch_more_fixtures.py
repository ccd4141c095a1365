"""Records the torch.optim trajectories of tests/test_torch_more_reference.py: `maximize=True`,
Adadelta, Rprop, ASGD, Adafactor and torch.optim.swa_utils.

Run `python tests/reference/make_torch_more_fixtures.py` (after `pip install -e ".[reference]"`)
to rewrite `torch_more_fixtures.npz` and `torch_more_fixtures.json` next to this file; the tests
read only those two files. The problem, the gradient and the float32 single-tensor steps are
those of `make_torch_fixtures.py` (imported from it), 100 steps recorded after every step.

Besides the params, a case may record what torch keeps beside them:
- ASGD: the average `ax` of its state, under '<case>/ax/<leaf>';
- swa_utils: the params of an `AveragedModel` after every step, under '<case>/avg/<leaf>', with
  `SWALR` setting the learning rate from `swa_start` on, as torch's SWA recipe loops:
  `optimizer.step()`, then from `swa_start` on `averaged.update_parameters(model)` every `every`
  steps and `swa_scheduler.step()`.
The maximize cases feed torch the gradient of -L: `maximize=True` then descends L.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from make_torch_fixtures import (
    ATOL,
    LEAF_SHAPES,
    LR,
    RTOL,
    SEED,
    STEPS,
    WD,
    gradient,
    hyperparameters,
    make_problem,
)

HERE = Path(__file__).resolve().parent
KAPPA = 0.1

# case -> (torch.optim class name, keyword arguments, extra); extra: "maximize" (the gradient of
# -L), "ax" (record ASGD's average), or a dict describing the averaging of swa_utils.
CASES: dict[str, tuple[str, dict, object]] = {
    "sgd_momentum_maximize": ("SGD", dict(lr=LR / 16, momentum=0.9, maximize=True), "maximize"),
    "adam_maximize": ("Adam", dict(lr=LR / 16, maximize=True), "maximize"),
    "adadelta": ("Adadelta", dict(lr=2.0), None),
    "adadelta_weight_decay": ("Adadelta", dict(lr=4.0, rho=0.95, weight_decay=WD), None),
    # Rprop's steps are decided by signs: where the gradient crosses zero, float32 and float64
    # take different branches, so its noise estimate (4) says little; replayed in float32 with
    # the same gradient, the branches are the same.
    "rprop": ("Rprop", dict(lr=LR / 8), None),
    "rprop_etas_step_sizes": (
        "Rprop", dict(lr=LR / 8, etas=(0.25, 1.5), step_sizes=(1e-3, LR / 8)), None
    ),
    "asgd": ("ASGD", dict(lr=LR / 2), "ax"),
    "asgd_averaging": ("ASGD", dict(lr=LR / 2, lambd=1e-2, alpha=0.5, t0=40), "ax"),
    "asgd_weight_decay": ("ASGD", dict(lr=LR / 2, t0=20.5, weight_decay=WD), "ax"),
    "adafactor": ("Adafactor", dict(lr=LR / 32), None),
    "adafactor_weight_decay": ("Adafactor", dict(lr=LR / 32, weight_decay=WD, d=2.0), None),
    # ρ_t = min(lr, 1/√t) turns to 1/√t after step 64
    "adafactor_relative_step": (
        "Adafactor", dict(lr=LR, beta2_decay=-0.3, eps=(1e-3, 1e-2), d=4.0), None
    ),
    "swa": ("SGD", dict(lr=LR / 16, momentum=0.9),
            dict(start=30, every=1, swa_lr=LR / 64, anneal_epochs=10, anneal_strategy="cos")),
    "swa_every_5_linear": ("SGD", dict(lr=LR / 16, momentum=0.9),
                           dict(start=20, every=5, swa_lr=LR / 32, anneal_epochs=15,
                                anneal_strategy="linear")),
    "ema_averaged_model": ("Adam", dict(lr=LR / 16), dict(start=10, every=2, decay=0.9)),
}


def run_torch(optimizer: str, kwargs: dict, extra, arrays: dict, grad_fn=gradient) -> dict:
    """Per leaf, shape (STEPS, *leaf): the params after each step, and what `extra` asks for."""
    params = torch.nn.ParameterDict(
        {name: torch.nn.Parameter(torch.tensor(arrays[f"init/{name}"])) for name in LEAF_SHAPES})
    opt = getattr(torch.optim, optimizer)(list(params.values()), foreach=False, **kwargs)
    averaged = swa_scheduler = None
    if isinstance(extra, dict):
        if "decay" in extra:
            fn = torch.optim.swa_utils.get_ema_multi_avg_fn(extra["decay"])
            averaged = torch.optim.swa_utils.AveragedModel(params, multi_avg_fn=fn)
        else:
            averaged = torch.optim.swa_utils.AveragedModel(params)
        if "swa_lr" in extra:
            swa_scheduler = torch.optim.swa_utils.SWALR(
                opt, swa_lr=extra["swa_lr"], anneal_epochs=extra["anneal_epochs"],
                anneal_strategy=extra["anneal_strategy"])
    record: dict[str, list] = {}
    sign = -1.0 if extra == "maximize" else 1.0
    for step in range(STEPS):
        grads = grad_fn({k: v.detach().numpy() for k, v in params.items()}, arrays)
        for name, p in params.items():
            p.grad = torch.from_numpy(np.asarray(sign * grads[name], grads[name].dtype))
        opt.step()
        if averaged is not None and step >= extra["start"]:
            if (step - extra["start"]) % extra["every"] == 0:
                averaged.update_parameters(params)
            if swa_scheduler is not None:
                swa_scheduler.step()
        for name, p in params.items():
            record.setdefault(name, []).append(p.detach().numpy().copy())
            if extra == "ax":
                ax = opt.state[p]["ax"]
                record.setdefault(f"ax/{name}", []).append(ax.detach().numpy().copy())
            if averaged is not None:
                avg = averaged.module[name]
                record.setdefault(f"avg/{name}", []).append(avg.detach().numpy().copy())
    return {key: np.stack(values) for key, values in record.items()}


def noise_vs_exact(optimizer: str, kwargs: dict, extra, arrays: dict, record: dict) -> float:
    """torch's own float32 rounding in units of the test's tolerance: the float32 record
    against torch in float64 with the unrounded gradient (as make_torch_fixtures.py)."""
    wide = {k: v.astype(np.float64) for k, v in arrays.items()}
    exact = run_torch(optimizer, kwargs, extra, wide, exact_gradient)
    worst = 0.0
    for key, ref in exact.items():
        err = np.abs(record[key] - ref) / (ATOL + RTOL * np.abs(ref))
        worst = max(worst, float(np.max(err)))
    return worst


def exact_gradient(params: dict, arrays: dict) -> dict:
    """∇L(p) in float64, not rounded."""
    out = {}
    for name, p in params.items():
        x = np.asarray(p, np.float64).reshape(-1)
        g = arrays[f"A/{name}"] @ x + arrays[f"c/{name}"] + KAPPA * np.sin(x)
        out[name] = g.reshape(np.shape(p))
    return out


def main() -> None:
    torch.use_deterministic_algorithms(True)
    arrays = make_problem()
    out = dict(arrays)
    cases = {}
    print(f"{'case':32s} torch float32 vs exact, in units of the test's tolerance")
    for case, (optimizer, kwargs, extra) in CASES.items():
        record = run_torch(optimizer, kwargs, extra, arrays)
        if not all(np.isfinite(t).all() for t in record.values()):
            raise RuntimeError(f"{case}: torch trajectory is not finite")
        moved = max(float(np.max(np.abs(record[n][-1] - arrays[f"init/{n}"])))
                    for n in LEAF_SHAPES)
        print(f"{case:32s} {noise_vs_exact(optimizer, kwargs, extra, arrays, record):.2f}"
              f"   moved {moved:.3f}")
        for key, t in record.items():
            out[f"{case}/{key}"] = t
        kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        cases[case] = {
            "optimizer": f"torch.optim.{optimizer}",
            "kwargs": kw,
            "hyperparameters": hyperparameters(optimizer, kwargs),
            "negated_gradient": extra == "maximize",
            "averaging": extra if isinstance(extra, dict) else None,
            "records": sorted({key.rsplit("/", 1)[0] if "/" in key else "params"
                               for key in record}),
        }
    np.savez_compressed(HERE / "torch_more_fixtures.npz", **out)
    meta = {
        "torch_version": torch.__version__,
        "steps": STEPS,
        "dtype": "float32",
        "leaves": {k: list(v) for k, v in LEAF_SHAPES.items()},
        "gradient": "as in torch_fixtures.json: g = A p + c + kappa sin(p), float64, to float32",
        "kappa": KAPPA,
        "seed": SEED,
        "trajectory": "'<case>/<leaf>': params after each step; '<case>/ax/<leaf>': ASGD's "
                      "average; '<case>/avg/<leaf>': the AveragedModel's params",
        "cases": cases,
    }
    (HERE / "torch_more_fixtures.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
