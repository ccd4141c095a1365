"""Records torch.optim.Muon trajectories that tests/test_orthogonal.py replays with gradxform.

Run `python tests/reference/make_torch_muon_fixtures.py` (needs torch >= 2.9, e.g.
`pip install -e ".[reference]"`) to rewrite `torch_muon_fixtures.npz` and
`torch_muon_fixtures.json` next to this file. The tests read only those two files.

The problem: two float32 weight matrices in torch's (out, in) layout, a tall one (8x5) and a
wide one (4x10), each with its own loss
    L(W) = ½ wᵀ A w + cᵀ w - κ Σ cos(w),     ∇L(W) = A w + c + κ sin(w),   w = vec(W)
with A symmetric positive definite. The gradient depends on the params, so a step computed
differently moves the rest of the trajectory. It is evaluated in float64 from the float32
params and rounded to float32 (numpy here and in the test give the same bits). Everything
after that is torch.optim.Muon, whose Newton–Schulz iteration runs in bfloat16. After every
step the params and the momentum buffers are stored, so the test can also start each step from
torch's own state and compare one step at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
STEPS = 30
KAPPA = 0.5
SEED = 0
LEAF_SHAPES = {"w": (8, 5), "v": (4, 10)}

# name -> torch.optim.Muon keyword arguments. The learning rate is a power of two so that
# torch's `add_(O, alpha=-lr)` and gradxform's "scale by -lr, then add" round alike.
CASES: dict[str, dict] = {
    "default": dict(lr=1 / 32, weight_decay=0.1),
    "no_nesterov": dict(lr=1 / 32, weight_decay=0.0, nesterov=False, momentum=0.9),
    "match_rms_adamw": dict(lr=1 / 64, weight_decay=0.05, adjust_lr_fn="match_rms_adamw",
                            ns_steps=3),
}


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


def gradient(arrays: dict, params: dict) -> dict:
    out = {}
    for name in LEAF_SHAPES:
        x = np.asarray(params[name], np.float64).reshape(-1)
        g = arrays[f"A/{name}"] @ x + arrays[f"c/{name}"] + KAPPA * np.sin(x)
        out[name] = g.reshape(np.shape(params[name])).astype(np.float32)
    return out


def run_case(arrays: dict, kwargs: dict) -> dict[str, np.ndarray]:
    params = {name: torch.tensor(arrays[f"x0/{name}"]) for name in LEAF_SHAPES}
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Muon(list(params.values()), **kwargs)
    theta = {name: [] for name in LEAF_SHAPES}
    buf = {name: [] for name in LEAF_SHAPES}
    for _ in range(STEPS):
        grads = gradient(arrays, {k: v.detach().numpy() for k, v in params.items()})
        for name, p in params.items():
            p.grad = torch.tensor(grads[name])
        opt.step()
        for name, p in params.items():
            theta[name].append(p.detach().numpy().copy())
            buf[name].append(opt.state[p]["momentum_buffer"].numpy().copy())
    out = {}
    for name in LEAF_SHAPES:
        out[f"theta/{name}"] = np.stack(theta[name])
        out[f"buf/{name}"] = np.stack(buf[name])
    return out


def main() -> None:
    torch.manual_seed(SEED)
    arrays = make_problem()
    for case, kwargs in CASES.items():
        for key, value in run_case(arrays, kwargs).items():
            arrays[f"{case}/{key}"] = value
    np.savez_compressed(HERE / "torch_muon_fixtures.npz", **arrays)
    meta = {
        "torch_version": torch.__version__,
        "steps": STEPS,
        "kappa": KAPPA,
        "leaves": list(LEAF_SHAPES),
        "cases": CASES,
        "defaults": {"momentum": 0.95, "nesterov": True, "eps": 1e-7, "ns_steps": 5,
                     "ns_coefficients": [3.4445, -4.7750, 2.0315], "adjust_lr_fn": None},
    }
    with open(HERE / "torch_muon_fixtures.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
