"""Optimistic gradients: optax's numbers, the equations in numpy, a bilinear game, the kernel."""

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

# One pair per name, its arguments away from the defaults (test_signature_is_optax_s holds the
# defaults to optax's).
PAIRS = {
    "scale_by_optimistic_gradient": lambda lib: lib.chain(
        lib.scale_by_optimistic_gradient(0.5, 2.0), lib.scale(-0.01)),
    "optimistic_gradient_descent": lambda lib: lib.optimistic_gradient_descent(0.02, 0.3, 0.6),
    "optimistic_adam": lambda lib: lib.optimistic_adam(0.01, 0.05, 0.8, 0.99),
    "optimistic_adam_v2": lambda lib: lib.optimistic_adam_v2(
        0.01, alpha=0.5, beta=2.0, b1=0.8, eps=1e-6, eps_root=1e-9, nesterov=False),
}
# optax's Adam forms 1 - β^t in float32 (see test_adam_variants): compare with the exact run.
WITH_ADAM = {n for n in PAIRS if "adam" in n}


@pytest.fixture(scope="module")
def runs():
    with pytest.warns(DeprecationWarning):  # optax deprecates its optimistic_adam
        with jax.enable_x64(True):
            runs64 = run_optax_pairs(PAIRS, jnp.float64)
        runs32 = run_optax_pairs(PAIRS, jnp.float32)
    return runs64, runs32


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax(name, runs):
    assert_matches_optax(name, *runs, exact32=name in WITH_ADAM)


@pytest.mark.parametrize("name", ["scale_by_optimistic_gradient", "optimistic_gradient_descent",
                                  "optimistic_adam", "optimistic_adam_v2"])
def test_signature_is_optax_s(name):
    ours = inspect.signature(getattr(gx, name)).parameters.values()
    theirs = inspect.signature(getattr(optax, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]


# -- the equations, re-derived in numpy (float64) ----------------------------------------------

def _ogd_np(lr, alpha, beta):
    """Generalized OGD (Mokhtari et al.): θ_t = θ_{t-1} - η (α g_t + β (g_t - g_{t-1})),
    g_0 = g_1."""
    def step(t, g, g_prev, p):
        g_prev = g if g_prev is None else g_prev
        return -lr * (alpha * g + beta * (g - g_prev)), g
    return step


def _optimistic_adam_np(lr, optimism, b1=0.9, b2=0.999, eps=1e-8):
    """Daskalakis et al., Algorithm 1, with Adam's direction r_t (NAdam's look-ahead first
    moment, optax's default): θ_t = θ_{t-1} - η r_t - o (r_t - r_{t-1}), r_0 = r_1."""
    def step(t, g, s, p):
        m, v, r_prev = s or (0 * g, 0 * g, None)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        r = m_hat / (np.sqrt(v / (1 - b2**t)) + eps)
        r_prev = r if r_prev is None else r_prev
        return -(lr * r + optimism * (r - r_prev)), (m, v, r)
    return step


NUMPY = {
    "optimistic_gradient_descent": (lambda: gx.optimistic_gradient_descent(0.02, 0.3, 0.6),
                                    _ogd_np(0.02, 0.3, 0.6)),
    "optimistic_adam": (lambda: gx.optimistic_adam(0.01, 0.05), _optimistic_adam_np(0.01, 0.05)),
    "optimistic_adam_v2": (lambda: gx.optimistic_adam_v2(0.1, alpha=0.1, beta=0.5),
                           _optimistic_adam_np(0.1 * 0.1, 0.1 * 0.5)),
}


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_numpy_rederivation(name):
    make, direction = NUMPY[name]
    assert_matches_numpy(make(), direction)


def test_converges_on_a_bilinear_game_where_gradient_descent_ascent_does_not():
    """min_x max_y x·y: simultaneous gradient descent-ascent spirals out from (1, 1); the
    optimistic step spirals in to the saddle point (0, 0)."""
    def run(opt, steps=2000):
        def step(carry, _):
            p, s = carry
            g = {"x": p["y"], "y": -p["x"]}  # descend in x, ascend in y
            u, s = opt.update(g, s, p)
            return (gx.apply_updates(p, u), s), None
        p0 = {"x": jnp.ones(()), "y": jnp.ones(())}
        (p, _), _ = jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)
        return float(jnp.hypot(p["x"], p["y"]))

    assert run(gx.sgd(0.1)) > 10
    assert run(gx.optimistic_gradient_descent(0.1)) < 1e-3


def test_state_and_first_step():
    opt = gx.scale_by_optimistic_gradient(0.5, 2.0)
    s = opt.init({"w": jnp.zeros(2)})
    assert s._fields == ("count", "previous_gradient")
    g = {"w": jnp.array([1.0, -2.0])}
    u, s = opt.update(g, s)
    np.testing.assert_array_equal(u["w"], 0.5 * g["w"])  # α g_1: no change yet
    u, s = opt.update({"w": jnp.array([3.0, 0.0])}, s)
    np.testing.assert_array_equal(u["w"], [2.5 * 3.0 - 2.0 * 1.0, 2.0 * 2.0])


def test_optimistic_adam_takes_a_schedule():
    """optax refuses a schedule as optimistic_adam's learning rate; here α and the optimism
    follow it."""
    lr = gx.linear_schedule(0.1, 0.0, 10)
    opt = gx.optimistic_adam(lr)
    s = opt.init({"w": jnp.zeros(2)})
    for _ in range(3):
        _, s = opt.update({"w": jnp.ones(2)}, s)
    hp = gx.hyperparams(opt, s)["scale_by_optimistic_gradient"]
    np.testing.assert_allclose([hp["alpha"], hp["beta"]], [0.07, 0.07], rtol=1e-6)


@pytest.mark.skipif(not kernel.available(),
                    reason=f"the vector kernel does not run here: {kernel.status()}")
@pytest.mark.parametrize("name", ["optimistic_gradient_descent", "optimistic_adam_v2"])
def test_make_step_fuses_them_with_the_numbers_of_the_xla_program(name):
    assert_fused_like_xla({"optimistic_gradient_descent":
                           lambda: gx.optimistic_gradient_descent(1e-2, 0.5, 2.0),
                           "optimistic_adam_v2":
                           lambda: gx.optimistic_adam_v2(1e-2, beta=0.5)}[name]())


BAD = [
    (lambda: gx.scale_by_optimistic_gradient(-1.0),
     "scale_by_optimistic_gradient: alpha must be >= 0, got -1.0"),
    (lambda: gx.scale_by_optimistic_gradient(1.0, float("inf")),
     "scale_by_optimistic_gradient: beta must be finite, got inf"),
    (lambda: gx.optimistic_gradient_descent(0.1, beta=-0.5),
     "scale_by_optimistic_gradient: beta must be >= 0, got -0.5"),
    (lambda: gx.optimistic_gradient_descent(-0.1),
     "scale_by_learning_rate: learning_rate must be >= 0, got -0.1"),
    (lambda: gx.optimistic_adam(-0.1), "optimistic_adam: learning_rate must be >= 0, got -0.1"),
    (lambda: gx.optimistic_adam(0.1, -1.0), "optimistic_adam: optimism must be >= 0, got -1.0"),
    (lambda: gx.optimistic_adam(0.1, b1=1.0), "scale_by_adam: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.optimistic_adam_v2(0.1, alpha=-2.0),
     "scale_by_optimistic_gradient: alpha must be >= 0, got -2.0"),
    (lambda: gx.optimistic_adam_v2(0.1, b2=1.5), "scale_by_adam: b2 must be in [0, 1), got 1.5"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)
