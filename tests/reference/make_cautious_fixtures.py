"""Records the Cautious-optimizer authors' C-AdamW trajectories that tests/test_cautious.py replays.

Run `python tests/reference/make_cautious_fixtures.py` (needs torch) to rewrite
`cautious_fixtures.npz` and `cautious_fixtures.json` next to this file. The tests read only
those two files.

The optimizer is the authors' own code, c_adamw.py of github.com/kyleliang919/C-Optim (MIT
licence; commit 2c0517c4db2e50b56d389ba4803eab1f4b3b8ae3), read from a checkout of that
repository (`git clone https://github.com/kyleliang919/C-Optim` and
`GRADXFORM_CAUTIOUS_REFERENCE=<checkout> python tests/reference/make_cautious_fixtures.py`, or
a checkout at tests/reference/vendor/cautious, which git ignores). Its module imports
utilities for its distributed `foreach=True` path from a sibling `opt_utils` module; they are
not used by the per-parameter loop (`foreach=False`) run here, so this script registers empty
stand-ins for them before importing it.

The problem: a float32 matrix (8x5) and a vector (6,), each with its own loss
    L(x) = s (½ xᵀ A x + cᵀ x - κ Σ cos(x)),     ∇L(x) = s (A x + c + κ sin(x))
with A symmetric positive definite, evaluated in float64 from the float32 params and rounded to
float32 (numpy here and in the test give the same bits). The gradient depends on the params,
so a step computed differently moves the rest of the trajectory. The learning rate is large
enough that the momentum overshoots and disagrees in sign with the gradient on a part of the
coordinates, so the mask is exercised. Every case is also run in float64 (same problem, params
and buffers in float64): the distance between the two runs is what float32 rounding alone does
to the trajectory, and bounds the tolerance of the replay.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# A checkout of the authors' repository (see above); never committed here.
VENDOR = Path(os.environ.get("GRADXFORM_CAUTIOUS_REFERENCE", HERE / "vendor" / "cautious"))
STEPS = 40
KAPPA = 0.5
SCALE = 0.25
SEED = 0
LEAF_SHAPES = {"w": (8, 5), "b": (6,)}

# name -> keyword arguments of the authors' AdamW (lr powers of two; foreach=False always).
CASES: dict[str, dict] = {
    "default": dict(lr=1 / 16),
    "weight_decay": dict(lr=1 / 32, weight_decay=0.1, betas=(0.8, 0.99)),
    "large_eps": dict(lr=1 / 16, eps=1e-2, betas=(0.9, 0.999)),
}


def load_c_adamw():
    """The authors' module, imported as `c_optim.c_adamw` with `c_optim.opt_utils` stubbed."""
    package = types.ModuleType("c_optim")
    package.__path__ = [str(VENDOR)]
    stub = types.ModuleType("c_optim.opt_utils")
    for name in ("AsyncTask", "AsyncRuntime", "to_local", "create_param_batches", "pad_batch"):
        setattr(stub, name, None)
    sys.modules["c_optim"] = package
    sys.modules["c_optim.opt_utils"] = stub
    spec = importlib.util.spec_from_file_location("c_optim.c_adamw", VENDOR / "c_adamw.py")
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        opt = module.AdamW(list(params.values()), foreach=False, **kwargs)
    out = {f"{k}/{n}": [] for k in ("theta", "mu", "nu") for n in LEAF_SHAPES}
    for _ in range(STEPS):
        grads = gradient(arrays, {k: v.numpy() for k, v in params.items()}, dtype)
        for name, p in params.items():
            p.grad = torch.tensor(grads[name])
        opt.step()
        for name, p in params.items():
            out[f"theta/{name}"].append(p.numpy().copy())
            out[f"mu/{name}"].append(opt.state[p]["exp_avg"].numpy().copy())
            out[f"nu/{name}"].append(opt.state[p]["exp_avg_sq"].numpy().copy())
    return {k: np.stack(v) for k, v in out.items()}


def main() -> None:
    torch.manual_seed(SEED)
    module = load_c_adamw()
    arrays = make_problem()
    masked = {}
    for case, kwargs in CASES.items():
        for key, value in run_case(module, arrays, kwargs, np.float32).items():
            arrays[f"{case}/{key}"] = value
        for key, value in run_case(module, arrays, kwargs, np.float64).items():
            if key.startswith("theta/"):
                arrays[f"{case}/float64/{key}"] = value
        # fraction of coordinates whose momentum disagreed with the gradient, over the run
        off = 0
        total = 0
        for n in LEAF_SHAPES:
            theta = np.concatenate([arrays[f"x0/{n}"][None], arrays[f"{case}/theta/{n}"][:-1]])
            for t in range(STEPS):
                g = gradient(arrays, {n: theta[t]} | {m: arrays[f"x0/{m}"]
                                                     for m in LEAF_SHAPES if m != n})[n]
                off += int(np.sum(arrays[f"{case}/mu/{n}"][t] * g <= 0))
                total += g.size
        masked[case] = off / total
    np.savez_compressed(HERE / "cautious_fixtures.npz", **arrays)
    meta = {
        "torch_version": torch.__version__,
        "reference": "github.com/kyleliang919/C-Optim@2c0517c4db2e50b56d389ba4803eab1f4b3b8ae3 "
                     "c_adamw.py AdamW(foreach=False)",
        "steps": STEPS,
        "kappa": KAPPA,
        "scale": SCALE,
        "leaves": list(LEAF_SHAPES),
        "cases": CASES,
        "defaults": {"betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 0.0,
                     "correct_bias": True},
        "masked_fraction": masked,
    }
    with open(HERE / "cautious_fixtures.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
