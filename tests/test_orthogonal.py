"""Muon: Newton–Schulz re-derived in numpy, torch.optim.Muon trajectories, optax's contrib.muon.

The torch trajectories were recorded by `tests/reference/make_torch_muon_fixtures.py` (torch's
Newton–Schulz runs in bfloat16); these tests read the stored files and do not need torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform._src.presets.contrib import muon
from gradxform._src.primitives.newton_schulz import (
    MuonDimensionNumbers,
    orthogonalize_via_newton_schulz,
)
from gradxform._src.primitives.orthogonal import MuonState, scale_by_muon, scale_by_shape
from gradxform.testing import check_transformation

ABC = (3.4445, -4.7750, 2.0315)
REFERENCE = Path(__file__).resolve().parent / "reference"


# -- Newton–Schulz, re-derived in numpy -----------------------------------------------------------


def numpy_newton_schulz(g, steps=5, eps=1e-8):
    """The reference iteration in float64: X ← aX + (bA + cA²)X, A = XXᵀ, on the wide side."""
    x = np.asarray(g, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + eps)
    a, b, c = ABC
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def quintic(s, steps=5):
    """The same iteration on one singular value: σ ← aσ + bσ³ + cσ⁵."""
    a, b, c = ABC
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])
def test_newton_schulz_matches_numpy(shape):
    g = np.random.RandomState(sum(shape)).randn(*shape).astype(np.float32)
    ours = orthogonalize_via_newton_schulz(jnp.asarray(g))
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, numpy_newton_schulz(g), rtol=2e-5, atol=2e-6)


def test_singular_values_pushed_towards_one():
    """NS keeps the singular vectors and maps each singular value σ/‖G‖_F by the quintic.

    G has singular values spread over two decades; after five steps they all lie where the
    quintic sends [0.003, 1]: [0.68, 1.21] (not exactly 1: the coefficients trade exactness
    for a steep slope at 0).
    """
    rng = np.random.RandomState(0)
    u, _ = np.linalg.qr(rng.randn(6, 6))
    v, _ = np.linalg.qr(rng.randn(9, 6))
    s = np.logspace(0, -2, 6)
    g = (u * s) @ v.T
    ours = np.asarray(orthogonalize_via_newton_schulz(jnp.asarray(g, jnp.float32)), np.float64)
    expected = (u * quintic(s / np.linalg.norm(s))) @ v.T
    np.testing.assert_allclose(ours, expected, atol=2e-6)
    sv = np.linalg.svd(ours, compute_uv=False)
    assert sv.min() > 0.68 and sv.max() < 1.21, sv
    assert s.max() / s.min() == pytest.approx(100.0)


def test_stacked_matrices_and_conv_kernels_by_reshaping():
    rng = np.random.RandomState(1)
    stacked = rng.randn(3, 4, 6).astype(np.float32)  # (layers, in, out)
    ours = orthogonalize_via_newton_schulz(
        jnp.asarray(stacked), dimension_numbers=MuonDimensionNumbers(1, 2))
    expected = np.stack([numpy_newton_schulz(m) for m in stacked])
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-6)

    kernel = rng.randn(3, 3, 4, 8).astype(np.float32)  # flax HWIO
    ours = orthogonalize_via_newton_schulz(
        jnp.asarray(kernel), dimension_numbers=MuonDimensionNumbers((0, 1, 2), 3))
    expected = numpy_newton_schulz(kernel.reshape(36, 8)).reshape(kernel.shape)
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-6)

    torch_kernel = np.transpose(kernel, (3, 2, 0, 1))  # torch OIHW: same weights, other layout
    ours_oihw = orthogonalize_via_newton_schulz(
        jnp.asarray(torch_kernel), dimension_numbers=MuonDimensionNumbers((1, 2, 3), 0))
    expected_oihw = numpy_newton_schulz(torch_kernel.reshape(8, 36).T).T.reshape(8, 4, 3, 3)
    np.testing.assert_allclose(ours_oihw, expected_oihw, rtol=2e-5, atol=2e-6)


# -- torch.optim.Muon -----------------------------------------------------------------------------

with open(REFERENCE / "torch_muon_fixtures.json") as f:
    META = json.load(f)
with np.load(REFERENCE / "torch_muon_fixtures.npz") as f:
    ARRAYS = dict(f)
LEAVES = META["leaves"]
TORCH_LAYOUT = MuonDimensionNumbers(reduction_axis=1, output_axis=0)  # (out, in) weights


def torch_gradient(params):
    """∇L(W) = A w + c + κ sin(w), in float64 rounded to float32, as the fixture script."""
    out = {}
    for name in LEAVES:
        x = np.asarray(params[name], np.float64).reshape(-1)
        g = ARRAYS[f"A/{name}"] @ x + ARRAYS[f"c/{name}"] + META["kappa"] * np.sin(x)
        out[name] = jnp.asarray(g.reshape(np.shape(params[name])).astype(np.float32))
    return out


def torch_settings(case):
    s = dict(META["defaults"])
    s.update(META["cases"][case])
    return s


def torch_muon_direction(s):
    return dict(beta=s["momentum"], nesterov=s["nesterov"], ns_coeffs=tuple(s["ns_coefficients"]),
                eps=s["eps"], ns_steps=s["ns_steps"], debias=False, ns_dtype=jnp.bfloat16)


def torch_consistent_rms(s):
    return None if s["adjust_lr_fn"] in (None, "original") else 0.2


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_each_step_matches_torch_muon(case):
    """From torch's params and momentum buffer after step t-1, our step t lands on torch's.

    Newton–Schulz runs in bfloat16 on both sides with float32 accumulation, so the updates agree
    to the float32 rounding of the params.
    """
    s = torch_settings(case)
    opt = gx.chain(
        scale_by_muon(weight_dimension_numbers=TORCH_LAYOUT, **torch_muon_direction(s)),
        scale_by_shape(weight_dimension_numbers=TORCH_LAYOUT,
                       consistent_rms=torch_consistent_rms(s)),
        gx.add_decayed_weights(s["weight_decay"]),
        gx.scale_by_learning_rate(s["lr"]),
    )
    theta = {n: ARRAYS[f"{case}/theta/{n}"] for n in LEAVES}
    buf = {n: ARRAYS[f"{case}/buf/{n}"] for n in LEAVES}
    x0 = {n: ARRAYS[f"x0/{n}"] for n in LEAVES}
    steps = META["steps"]
    prev_theta = {n: np.concatenate([x0[n][None], theta[n][:-1]]) for n in LEAVES}
    prev_buf = {n: np.concatenate([np.zeros_like(x0[n])[None], buf[n][:-1]]) for n in LEAVES}
    grads = [torch_gradient({n: prev_theta[n][t] for n in LEAVES}) for t in range(steps)]

    def one_step(p, mu, g, count):
        state = opt.init(p)
        state = (MuonState(count=count, mu=mu),) + state[1:]
        u, state = opt.update(g, state, p)
        return gx.apply_updates(p, u), state[0].mu

    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    ours_theta, ours_buf = jax.jit(jax.vmap(one_step))(
        jax.tree.map(jnp.asarray, prev_theta), jax.tree.map(jnp.asarray, prev_buf),
        stack(grads), jnp.arange(steps, dtype=jnp.int32))
    for n in LEAVES:
        np.testing.assert_allclose(ours_buf[n], buf[n], rtol=2e-6, atol=1e-7, err_msg=n)
        np.testing.assert_allclose(ours_theta[n], theta[n], rtol=0, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("case", ["default", "match_rms_adamw"])
def test_trajectory_matches_torch_muon(case):
    """The `muon` preset with torch's options follows torch's trajectory for 30 steps."""
    s = torch_settings(case)
    opt = muon(s["lr"], weight_decay=s["weight_decay"], muon_weight_dimension_numbers=TORCH_LAYOUT,
               consistent_rms=torch_consistent_rms(s), **torch_muon_direction(s))
    params = {n: jnp.asarray(ARRAYS[f"x0/{n}"]) for n in LEAVES}
    state = opt.init(params)
    step = jax.jit(opt.update)
    for t in range(META["steps"]):
        u, state = step(torch_gradient(params), state, params)
        params = gx.apply_updates(params, u)
        for n in LEAVES:
            np.testing.assert_allclose(params[n], ARRAYS[f"{case}/theta/{n}"][t], rtol=0,
                                       atol=1e-5, err_msg=f"{n}, step {t}")
    moved = max(np.abs(ARRAYS[f"{case}/theta/{n}"][-1] - ARRAYS[f"x0/{n}"]).max() for n in LEAVES)
    assert moved > 0.1


# -- optax.contrib.muon ---------------------------------------------------------------------------


def _params(dtype):
    rng = np.random.RandomState(0)
    return {"w": jnp.asarray(rng.randn(6, 4), dtype), "v": jnp.asarray(rng.randn(3, 7), dtype),
            "b": jnp.asarray(rng.randn(4), dtype), "c": jnp.asarray(rng.randn(), dtype)}


def _loss(p):
    """Non-quadratic in the matrices; AdamW's leaves stay far from their minimum, where Adam's
    m/√v of a vanishing gradient would make float32 rounding matter."""
    slopes = jnp.asarray([1.0, -2.0, 0.5, 3.0], p["b"].dtype)
    return (jnp.sum(jnp.sin(p["w"]) * p["w"]) + jnp.sum(p["v"] ** 3) / 10
            + jnp.sum(slopes * p["b"] + 0.1 * p["b"] ** 2) + 2 * p["c"]
            + jnp.sum(p["w"][:3].T @ p["v"]) / 10)


OPTAX_CASES = {
    "default": dict(),
    "decay_rms_adaptive": dict(weight_decay=0.1, consistent_rms=0.2, adaptive=True,
                               adam_weight_decay=0.01, adam_learning_rate=0.005),
    "no_nesterov": dict(nesterov=False, beta=0.9, ns_steps=3),
}


@pytest.mark.parametrize("case, dtype", [
    ("default", jnp.float32), ("default", jnp.float64), ("decay_rms_adaptive", jnp.float64),
    ("no_nesterov", jnp.float64)])
def test_same_numbers_as_optax_muon(case, dtype, trajectories):
    kwargs = OPTAX_CASES[case]
    with jax.enable_x64(dtype == jnp.float64):
        params = _params(dtype)
        ours = jax.jit(lambda p: trajectories.on_loss(muon(0.02, **kwargs), gx.apply_updates, p,
                                                      _loss, steps=40))(params)
        theirs = jax.jit(lambda p: trajectories.on_loss(optax.contrib.muon(0.02, **kwargs),
                                                        optax.apply_updates, p, _loss,
                                                        steps=40))(params)
        # float32: optax forms Adam's bias correction 1 - β2^t as float32 arithmetic, off by
        # up to ulp(β2)/(1 - β2) ≈ 1.3e-5 relative, where gradxform keeps its digits (see
        # gradxform.momentum.bias_correction). AdamW's leaves then differ by at most
        # 1.3e-5 · η per step: 1e-5 after 40 steps of η = 0.02.
        rtol, atol = (1e-5, 1e-5) if dtype == jnp.float32 else (1e-12, 1e-13)
        for k in params:
            assert ours[k].dtype == dtype
            np.testing.assert_allclose(ours[k], theirs[k], rtol=rtol, atol=atol, err_msg=k)
        assert float(jnp.abs(ours["w"][-1] - ours["w"][0]).max()) > 0.1


# -- routing and layouts --------------------------------------------------------------------------


def test_routing_sends_non_matrices_and_chosen_matrices_to_adamw():
    rng = np.random.RandomState(2)
    params = {"embed": jnp.asarray(rng.randn(10, 4), jnp.float32),
              "hidden": jnp.asarray(rng.randn(4, 4), jnp.float32),
              "stack": jnp.asarray(rng.randn(2, 4, 3), jnp.float32),
              "bias": jnp.asarray(rng.randn(4), jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape), jnp.float32), params)
    dims = {"embed": None, "hidden": MuonDimensionNumbers(), "stack": MuonDimensionNumbers(1, 2),
            "bias": None}
    opt = muon(0.1, muon_weight_dimension_numbers=dims)
    u, _ = opt.update(grads, opt.init(params), params)

    adam_u, _ = gx.adamw(0.1, weight_decay=0.0, nesterov=True).update(
        grads, gx.adamw(0.1, weight_decay=0.0, nesterov=True).init(params), params)
    for k in ("embed", "bias"):
        np.testing.assert_allclose(u[k], adam_u[k], rtol=1e-6, err_msg=k)
    # Muon's first step: NS of the Nesterov-debiased momentum, which at t = 1 is g itself.
    np.testing.assert_allclose(u["hidden"], -0.1 * numpy_newton_schulz(grads["hidden"]),
                               rtol=2e-5, atol=2e-6)
    for i in range(2):
        scale = np.sqrt(max(1.0, 3 / 4))
        np.testing.assert_allclose(u["stack"][i], -0.1 * scale * numpy_newton_schulz(
            grads["stack"][i]), rtol=2e-5, atol=2e-6)

    default_u, _ = muon(0.1).update(grads, muon(0.1).init(params), params)
    np.testing.assert_allclose(default_u["embed"],
                               -0.1 * numpy_newton_schulz(grads["embed"]), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(default_u["stack"], adam_u["stack"], rtol=1e-6)


def test_non_matrix_leaf_is_refused_with_a_fix():
    t = scale_by_muon()
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"leaf 'b' of shape \(3,\) is not a matrix.*muon"):
        t.update(params, t.init(params), params)
    with pytest.raises(ValueError, match="ns_coeffs"):
        scale_by_muon(ns_coeffs=(1.0, 2.0))
    with pytest.raises(ValueError, match="distinct"):
        orthogonalize_via_newton_schulz(jnp.ones((2, 3)), dimension_numbers=MuonDimensionNumbers(
            0, 0))


def test_changing_beta_does_not_recompile():
    params = {"w": jnp.ones((3, 2))}
    traces = []

    @jax.jit
    def step(opt, g, s):
        traces.append(1)
        return opt.update(g, s, params)

    for beta in (0.9, 0.95):
        opt = scale_by_muon(beta=beta)
        step(opt, params, opt.init(params))
    assert len(traces) == 1


def test_conformance_on_stacked_none_and_empty_matrices():
    """(A plain matrix goes through tests/test_conformance.py.)"""
    rng = np.random.RandomState(3)
    params = {"k": jnp.asarray(rng.randn(2, 3, 5), jnp.float32),
              "frozen": None, "empty": jnp.zeros((0, 3), jnp.float32)}
    dims = {"k": MuonDimensionNumbers(1, 2), "empty": MuonDimensionNumbers()}
    check_transformation(scale_by_muon(weight_dimension_numbers=dims), params)
