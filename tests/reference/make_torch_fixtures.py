"""Records torch.optim trajectories that tests/test_torch_reference.py replays with gradxform.

Run `python tests/reference/make_torch_fixtures.py` (after `pip install -e ".[reference]"`)
to rewrite `torch_fixtures.npz` and `torch_fixtures.json` next to this file. The tests read
only those two files, so they run without torch.

The problem: a tree of three float32 leaves (a 3x4 matrix, a 4-vector, a scalar), each with
its own loss
    L(θ) = ½ θᵀ A θ + cᵀ θ - κ Σ cos θ,     ∇L(θ) = A θ + c + κ sin θ     (θ flattened)
with A symmetric positive definite. The gradient depends on the params, so an optimizer that
steps differently from torch moves onto a different trajectory and stays there. The gradient
is evaluated in float64 from the float32 params and rounded to float32, so this numpy code and
the test's copy of it give the same float32 gradient to the bit; everything after that is
torch's single-tensor float32 implementation (foreach=False): 100 steps, every step recorded.

The test asks for 1e-6 relative agreement at every step, which is within a few times of what
float32 itself allows after 100 steps: each step rounds each param by up to half an ulp
(6e-8 relative), torch rounds twice in some steps (decoupled decay, NAdam's two `addcdiv_`),
and the two libraries order their arithmetic differently. The problem is set up so that this
rounding noise stays well inside the tolerance and the comparison measures the method:
- learning rates and weight decays are powers of two, so η u and λ θ are exact and torch's
  fused `add(u, alpha=-η)` rounds as gradxform's "scale, then add" does; torch's decoupled
  decay θ(1 - ηλ) then multiplies by an exact 1 - 2^-10 (with η = 0.01 and λ = 0.1 the
  factor 0.999 is stored as 0.99900001, and torch's trajectory drifts 1.3e-6 from the exact
  one in 100 steps);
- every |θ_i| stays within about [1.35, 1.95]: away from zero, so the comparison is relative
  everywhere, and high in its binade, where an ulp is the smallest fraction of the value;
- the start is 0.1-0.2 from the minimum, where the optimizers pull rounding errors back
  instead of carrying them along.
`main` prints, per case, how far torch's float32 trajectory is from exact (float64)
arithmetic in units of the test's tolerance; keep it well below 1 when changing the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
STEPS = 100
KAPPA = 0.1
SEED = 0
LEAF_SHAPES = {"w": (3, 4), "b": (4,), "s": ()}
LR = 1 / 8
WD = 1 / 8
RTOL, ATOL = 1e-6, 1e-7  # the test's tolerance, for the printed noise estimate

# case -> (torch.optim class name, keyword arguments); torch fills in the other defaults.
CASES: dict[str, tuple[str, dict]] = {
    "sgd": ("SGD", dict(lr=LR / 4)),
    "sgd_momentum": ("SGD", dict(lr=LR / 16, momentum=0.9)),
    "sgd_nesterov": ("SGD", dict(lr=LR / 16, momentum=0.9, nesterov=True)),
    "sgd_dampening": ("SGD", dict(lr=LR / 16, momentum=0.9, dampening=0.5)),
    "sgd_weight_decay": ("SGD", dict(lr=LR / 4, weight_decay=WD)),
    "sgd_momentum_weight_decay": ("SGD", dict(lr=LR / 16, momentum=0.9, weight_decay=WD)),
    "adagrad": ("Adagrad", dict(lr=LR / 8)),
    "adagrad_weight_decay": ("Adagrad", dict(lr=LR / 8, weight_decay=WD)),
    "adagrad_initial_accumulator": ("Adagrad", dict(lr=LR / 8, initial_accumulator_value=0.5)),
    "adagrad_lr_decay": ("Adagrad", dict(lr=LR / 8, lr_decay=0.01)),
    "rmsprop": ("RMSprop", dict(lr=LR / 128)),
    "rmsprop_centered": ("RMSprop", dict(lr=LR / 128, centered=True)),
    "rmsprop_momentum": ("RMSprop", dict(lr=LR / 64, momentum=0.9)),
    "rmsprop_centered_momentum": ("RMSprop", dict(lr=LR / 64, momentum=0.9, centered=True)),
    "rmsprop_weight_decay": ("RMSprop", dict(lr=LR / 128, weight_decay=WD)),
    "adam": ("Adam", dict(lr=LR / 16)),
    "adam_weight_decay": ("Adam", dict(lr=LR / 16, weight_decay=WD)),
    "adam_decoupled_weight_decay": (
        "Adam", dict(lr=LR / 16, weight_decay=WD, decoupled_weight_decay=True)
    ),
    "adam_amsgrad": ("Adam", dict(lr=LR / 16, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=LR / 16, weight_decay=WD)),
    "adamax": ("Adamax", dict(lr=LR / 16)),
    "adamax_weight_decay": ("Adamax", dict(lr=LR / 16, weight_decay=WD)),
    "nadam": ("NAdam", dict(lr=LR / 16)),
    "nadam_weight_decay": ("NAdam", dict(lr=LR / 16, weight_decay=WD)),
    "nadam_decoupled_weight_decay": (
        "NAdam", dict(lr=LR / 16, weight_decay=WD, decoupled_weight_decay=True)
    ),
    "radam": ("RAdam", dict(lr=LR / 16)),
    "radam_weight_decay": ("RAdam", dict(lr=LR / 16, weight_decay=WD)),
    "radam_decoupled_weight_decay": (
        "RAdam", dict(lr=LR / 16, weight_decay=WD, decoupled_weight_decay=True)
    ),
}


def make_problem(seed: int = SEED) -> dict[str, np.ndarray]:
    """Per leaf: an SPD matrix A, a vector c, and the initial params.

    c is set so that the minimum θ* (∇L(θ*) = 0) has every coordinate in ±[1.6, 1.75]; the
    start lies 0.1-0.2 beyond it, on the same side of zero.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in LEAF_SHAPES.items():
        n = int(np.prod(shape))
        # diagonally dominant, so each coordinate's gradient keeps pointing to its own optimum
        off = rng.uniform(-1.0, 1.0, (n, n)) * 0.3 / max(n - 1, 1)
        A = np.diag(rng.uniform(0.5, 2.0, n)) + (off + off.T) / 2 * (1 - np.eye(n))
        sign = rng.choice([-1.0, 1.0], n)
        optimum = sign * rng.uniform(1.6, 1.75, n)
        arrays[f"A/{name}"] = A
        arrays[f"c/{name}"] = -(A @ optimum + KAPPA * np.sin(optimum))
        start = optimum + sign * rng.uniform(0.1, 0.2, n)
        arrays[f"init/{name}"] = start.reshape(shape).astype(np.float32)
    return arrays


def gradient(params: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> dict:
    """∇L(p) = A p + c + κ sin(p) per leaf, in float64, rounded to float32."""
    out = {}
    for name, p in params.items():
        x = np.asarray(p, np.float64).reshape(-1)
        g = arrays[f"A/{name}"] @ x + arrays[f"c/{name}"] + KAPPA * np.sin(x)
        out[name] = g.reshape(np.shape(p)).astype(np.float32)
    return out


def run_torch(optimizer: str, kwargs: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The params after each of STEPS torch.optim steps, per leaf: shape (STEPS, *leaf)."""
    params = {name: torch.tensor(arrays[f"init/{name}"]) for name in LEAF_SHAPES}
    opt = getattr(torch.optim, optimizer)(list(params.values()), foreach=False, **kwargs)
    trajectory = {name: [] for name in LEAF_SHAPES}
    for _ in range(STEPS):
        grads = gradient({k: v.numpy() for k, v in params.items()}, arrays)
        for name, p in params.items():
            p.grad = torch.from_numpy(grads[name])
        opt.step()
        for name, p in params.items():
            trajectory[name].append(p.detach().numpy().copy())
    return {name: np.stack(ps) for name, ps in trajectory.items()}


def hyperparameters(optimizer: str, kwargs: dict) -> dict:
    """All of torch's hyperparameters for `optimizer(**kwargs)`, defaults filled in."""
    opt = getattr(torch.optim, optimizer)([torch.zeros(1)], foreach=False, **kwargs)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in opt.defaults.items()}


def noise_vs_exact(optimizer: str, kwargs: dict, arrays: dict, trajectory: dict) -> float:
    """max |θ_float32 - θ_exact| / (ATOL + RTOL |θ_exact|): torch's own float32 rounding in
    units of the test's tolerance, against torch in float64 with the unrounded gradient."""
    params = {name: torch.tensor(arrays[f"init/{name}"], dtype=torch.float64)
              for name in LEAF_SHAPES}
    opt = getattr(torch.optim, optimizer)(list(params.values()), foreach=False, **kwargs)
    worst = 0.0
    for step in range(STEPS):
        for name, p in params.items():
            x = p.detach().numpy().reshape(-1)
            g = arrays[f"A/{name}"] @ x + arrays[f"c/{name}"] + KAPPA * np.sin(x)
            p.grad = torch.from_numpy(g.reshape(p.shape))
        opt.step()
        for name, p in params.items():
            exact = p.detach().numpy()
            err = np.abs(trajectory[name][step] - exact) / (ATOL + RTOL * np.abs(exact))
            worst = max(worst, float(np.max(err)))
    return worst


def main() -> None:
    torch.use_deterministic_algorithms(True)
    arrays = make_problem()
    out = dict(arrays)
    cases = {}
    print(f"{'case':32s} torch float32 vs exact, in units of the test's tolerance")
    for case, (optimizer, kwargs) in CASES.items():
        trajectory = run_torch(optimizer, kwargs, arrays)
        if not all(np.isfinite(t).all() for t in trajectory.values()):
            raise RuntimeError(f"{case}: torch trajectory is not finite; lower the learning rate")
        print(f"{case:32s} {noise_vs_exact(optimizer, kwargs, arrays, trajectory):.2f}")
        for name, t in trajectory.items():
            out[f"{case}/{name}"] = t
        cases[case] = {
            "optimizer": f"torch.optim.{optimizer}",
            "kwargs": kwargs,
            # every hyperparameter torch used, its defaults included
            "hyperparameters": hyperparameters(optimizer, kwargs),
        }
    # The gradient at the initial params and at the end of the Adam trajectory, so that the
    # test can first check that its copy of `gradient` agrees with this one to the bit.
    for point, params in {
        "init": {k: arrays[f"init/{k}"] for k in LEAF_SHAPES},
        "adam_final": {k: out[f"adam/{k}"][-1] for k in LEAF_SHAPES},
    }.items():
        for name, g in gradient(params, arrays).items():
            out[f"probe_grad/{point}/{name}"] = g
    np.savez_compressed(HERE / "torch_fixtures.npz", **out)
    meta = {
        "torch_version": torch.__version__,
        "steps": STEPS,
        "dtype": "float32",
        "leaves": {k: list(v) for k, v in LEAF_SHAPES.items()},
        "gradient": (
            "per leaf p (flattened): g = A p + c + kappa sin(p), evaluated in float64 from the "
            "float32 params and rounded to float32; A, c under 'A/<leaf>', 'c/<leaf>'"
        ),
        "kappa": KAPPA,
        "seed": SEED,
        "trajectory": "'<case>/<leaf>' has shape (steps, *leaf): the params after each step",
        "cases": cases,
    }
    (HERE / "torch_fixtures.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
