"""signSGD, Signum and Lion's sign variants: optax's numbers, numpy, the kernel."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    assert_fused_like_xla,
    assert_matches_numpy,
    assert_matches_optax,
    run_optax_pairs,
)

import gradxform as gx
from gradxform._src.fast import kernel

PAIRS = {
    "sign_sgd": lambda lib: lib.sign_sgd(0.01),
    "signum": lambda lib: lib.signum(0.01, 0.5),
    "scale_by_lion_smooth": lambda lib: lib.chain(
        lib.scale_by_lion(mode="smooth", smooth_beta=3.0), lib.scale(-0.01)),
    "scale_by_lion_refined": lambda lib: lib.chain(
        lib.scale_by_lion(0.8, b2=0.95, mode="refined"), lib.scale(-0.01)),
}


@pytest.fixture(scope="module")
def runs():
    with jax.enable_x64(True):
        runs64 = run_optax_pairs(PAIRS, jnp.float64)
    runs32 = run_optax_pairs(PAIRS, jnp.float32)
    return runs64, runs32


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax(name, runs):
    assert_matches_optax(name, *runs)


@pytest.mark.parametrize("name", ["sign_sgd", "signum", "scale_by_lion"])
def test_signature_is_optax_s(name):
    ours = inspect.signature(getattr(gx, name)).parameters.values()
    theirs = inspect.signature(getattr(optax, name)).parameters.values()
    if name == "scale_by_lion":  # optax's b1, b2, mu_dtype are positional, here keyword-only
        ours, theirs = list(ours)[3:], list(theirs)[3:]
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]


def _signum_np(lr, beta):
    """Bernstein et al., Algorithm 3: m_t = β m_{t-1} + (1 - β) g_t, θ_t = θ_{t-1} - η sign(m_t)."""
    def step(t, g, m, p):
        m = beta * (0 * g if m is None else m) + (1 - beta) * g
        return -lr * np.sign(m), m
    return step


def _lion_np(lr, b1, b2, sign):
    """c_t = β1 m_{t-1} + (1 - β1) g_t, θ_t = θ_{t-1} - η f(c_t),
    m_t = β2 m_{t-1} + (1 - β2) g_t."""
    def step(t, g, m, p):
        m = 0 * g if m is None else m
        return -lr * sign(b1 * m + (1 - b1) * g), b2 * m + (1 - b2) * g
    return step


NUMPY = {
    "sign_sgd": (lambda: gx.sign_sgd(0.01), _signum_np(0.01, 0.0)),
    "signum": (lambda: gx.signum(0.01, 0.8), _signum_np(0.01, 0.8)),
    "lion_smooth": (
        lambda: gx.chain(gx.scale_by_lion(mode="smooth", smooth_beta=3.0), gx.scale(-0.01)),
        _lion_np(0.01, 0.9, 0.99, lambda c: np.tanh(3.0 * c))),
    "lion_refined": (
        lambda: gx.chain(gx.scale_by_lion(mode="refined"), gx.scale(-0.01)),
        _lion_np(0.01, 0.9, 0.99, lambda c: np.where(np.abs(c) < 1, c, np.sign(c)))),
}


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_numpy_rederivation(name):
    make, direction = NUMPY[name]
    assert_matches_numpy(make(), direction)


def test_lion_modes_differ_where_they_should():
    """The refined sign is the identity inside (-1, 1), the smooth one tanh(s c)."""
    g = {"w": jnp.array([-3.0, -0.5, 0.0, 0.2, 4.0])}
    out = {}
    for mode in ("hard", "smooth", "refined"):
        opt = gx.scale_by_lion(0.0, mode=mode, smooth_beta=2.0)  # c_t = g_t
        out[mode] = np.asarray(opt.update(g, opt.init(g))[0]["w"])
    np.testing.assert_array_equal(out["hard"], [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(out["refined"], np.float32([-1, -0.5, 0, 0.2, 1]))
    np.testing.assert_allclose(out["smooth"], np.tanh(2.0 * np.asarray(g["w"])), rtol=1e-6)


@pytest.mark.skipif(not kernel.available(),
                    reason=f"the vector kernel does not run here: {kernel.status()}")
@pytest.mark.parametrize("name", ["signum", "lion_refined"])
def test_make_step_fuses_them_with_the_numbers_of_the_xla_program(name):
    assert_fused_like_xla({"signum": lambda: gx.signum(1e-2),
                           "lion_refined": lambda: gx.chain(gx.scale_by_lion(mode="refined"),
                                                            gx.scale_by_learning_rate(1e-2)),
                           }[name]())


BAD = [
    (lambda: gx.signum(0.1, 1.0), "ema: decay must be in [0, 1), got 1.0"),
    (lambda: gx.sign_sgd(-0.1), "scale_by_learning_rate: learning_rate must be >= 0, got -0.1"),
    (lambda: gx.scale_by_lion(mode="soft"),
     "scale_by_lion: mode must be one of 'hard', 'smooth', 'refined', got 'soft'"),
    (lambda: gx.scale_by_lion(mode="smooth", smooth_beta=0.0),
     "scale_by_lion: smooth_beta must be > 0, got 0.0"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)
