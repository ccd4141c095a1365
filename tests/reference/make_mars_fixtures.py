"""Records the MARS authors' MARS-AdamW trajectories that tests/test_mars.py replays.

Run `python tests/reference/make_mars_fixtures.py` (needs torch) to rewrite `mars_fixtures.npz`
and `mars_fixtures.json` next to this file. The tests read only those two files.

The optimizer is the authors' own code, MARS/optimizers/mars.py of github.com/AGI-Arena/MARS
(Apache-2.0 licence; commit 4831e28eba863a4e69d7e9474ff8e73bc1b410fe), read from a checkout of
that repository (`git clone https://github.com/AGI-Arena/MARS` and
`GRADXFORM_MARS_REFERENCE=<checkout> python tests/reference/make_mars_fixtures.py`, or a
checkout at tests/reference/vendor/mars, which git ignores), run as `MARS(mars_type="mars-adamw",
is_approx=True)`, their defaults.

The problem: a float32 matrix (8x5), a vector (6,) and a 3-D leaf (2x3x2), each with its own
loss
    L(x) = s (½ xᵀ A x + cᵀ x - κ Σ cos(x)),     ∇L(x) = s (A x + c + κ sin(x))
with A symmetric positive definite, evaluated in float64 from the float32 params and rounded to
float32 (numpy here and in the test give the same bits). The gradient depends on the params,
so a step computed differently moves the rest of the trajectory. The vector and the 3-D leaf
take the authors' AdamW branch (it is chosen by `grad.ndim == 2`) unless `optimize_1d=True`.
The scale s puts the norm of the corrected gradient c_t above 1 in the first steps and below it
later, so both sides of the clip are exercised. Every case is also run in float64: the distance
between the two runs is what float32 rounding alone does to the trajectory.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# A checkout of the authors' repository (see above); never committed here.
VENDOR = Path(os.environ.get("GRADXFORM_MARS_REFERENCE", HERE / "vendor" / "mars"))
STEPS = 40
KAPPA = 0.5
SCALE = 0.1
SEED = 1
LEAF_SHAPES = {"w": (8, 5), "b": (6,), "k": (2, 3, 2)}

# name -> keyword arguments of the authors' MARS (learning rates are powers of two).
CASES: dict[str, dict] = {
    "default": dict(lr=1 / 64, lr_1d=1 / 128),
    "weight_decay": dict(lr=1 / 32, lr_1d=1 / 64, weight_decay=0.1, gamma=0.05,
                         betas=(0.9, 0.99), betas_1d=(0.8, 0.9), weight_decay_1d=0.05),
    "optimize_1d": dict(lr=1 / 64, weight_decay=0.05, optimize_1d=True),
}


def load_mars():
    path = VENDOR / "MARS" / "optimizers" / "mars.py"
    spec = importlib.util.spec_from_file_location("mars_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_problem(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    arrays = {}
    for name, shape in LEAF_SHAPES.items():
        n = int(np.prod(shape))
        q = rng.randn(n, n)
        arrays[f"A/{name}"] = q @ q.T / n + 0.5 * np.eye(n)
        arrays[f"c/{name}"] = rng.randn(n)
        arrays[f"x0/{name}"] = rng.randn(*shape).astype(np.float32)
    return arrays


def gradient(arrays: dict, params: dict, dtype=np.float32) -> dict:
    out = {}
    for name in LEAF_SHAPES:
        x = np.asarray(params[name], np.float64).reshape(-1)
        g = SCALE * (arrays[f"A/{name}"] @ x + arrays[f"c/{name}"] + KAPPA * np.sin(x))
        out[name] = g.reshape(np.shape(params[name])).astype(dtype)
    return out


def run_case(module, arrays: dict, kwargs: dict, dtype) -> dict[str, np.ndarray]:
    params = {n: torch.tensor(arrays[f"x0/{n}"].astype(dtype)) for n in LEAF_SHAPES}
    opt = module.MARS(list(params.values()), **kwargs)
    out = {f"{k}/{n}": [] for k in ("theta", "mu", "nu", "grad") for n in LEAF_SHAPES}
    for _ in range(STEPS):
        grads = gradient(arrays, {k: v.numpy() for k, v in params.items()}, dtype)
        for name, p in params.items():
            p.grad = torch.tensor(grads[name])
        opt.step()
        for name, p in params.items():
            out[f"theta/{name}"].append(p.numpy().copy())
            out[f"mu/{name}"].append(opt.state[p]["exp_avg"].numpy().copy())
            out[f"nu/{name}"].append(opt.state[p]["exp_avg_sq"].numpy().copy())
            out[f"grad/{name}"].append(grads[name])
    return {k: np.stack(v) for k, v in out.items()}


def clipped_fraction(run: dict, kwargs: dict) -> float:
    """Fraction of the matrix's steps where ‖c_t‖ > 1, c_t as the authors' update_fn forms it."""
    b1 = kwargs.get("betas", (0.95, 0.99))[0]
    k = kwargs.get("gamma", 0.025) * b1 / (1 - b1)
    g = run["grad/w"].astype(np.float64)
    prev = np.concatenate([np.zeros_like(g[:1]), g[:-1]])
    norms = np.sqrt(np.sum((g + k * (g - prev)) ** 2, axis=(1, 2)))
    return float(np.mean(norms > 1))


def main() -> None:
    torch.manual_seed(SEED)
    module = load_mars()
    arrays = make_problem()
    clipped = {}
    for case, kwargs in CASES.items():
        run = run_case(module, arrays, kwargs, np.float32)
        clipped[case] = clipped_fraction(run, kwargs)
        for key, value in run.items():
            if not key.startswith("grad/"):
                arrays[f"{case}/{key}"] = value
        for key, value in run_case(module, arrays, kwargs, np.float64).items():
            if key.startswith("theta/"):
                arrays[f"{case}/float64/{key}"] = value
    np.savez_compressed(HERE / "mars_fixtures.npz", **arrays)
    meta = {
        "torch_version": torch.__version__,
        "reference": "github.com/AGI-Arena/MARS@4831e28eba863a4e69d7e9474ff8e73bc1b410fe "
                     "MARS/optimizers/mars.py MARS(mars_type='mars-adamw', is_approx=True)",
        "steps": STEPS,
        "kappa": KAPPA,
        "scale": SCALE,
        "leaves": list(LEAF_SHAPES),
        "cases": CASES,
        "defaults": {"lr": 3e-3, "betas": [0.95, 0.99], "eps": 1e-8, "weight_decay": 0.0,
                     "gamma": 0.025, "optimize_1d": False, "lr_1d": 3e-3,
                     "betas_1d": [0.9, 0.95], "weight_decay_1d": 0.1},
        "clipped_fraction": clipped,
    }
    with open(HERE / "mars_fixtures.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
