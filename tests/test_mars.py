"""scale_by_mars, mars: the authors' MARS-AdamW trajectories, a numpy step, hyperparameter checks.

The trajectories were recorded by `tests/reference/make_mars_fixtures.py` from the authors' own
code (github.com/AGI-Arena/MARS, read from a checkout by the script); this file replays them
without torch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import AuthorsFixture

import gradxform as gx

REFERENCE = AuthorsFixture("mars")
META, ARRAYS, LEAVES = REFERENCE.meta, REFERENCE.arrays, REFERENCE.leaves
gradient, settings = REFERENCE.gradient, REFERENCE.settings


def optimizer(case):
    s = settings(case)
    return gx.mars(s["lr"], b1=s["betas"][0], b2=s["betas"][1], eps=s["eps"],
                   weight_decay=s["weight_decay"], gamma=s["gamma"],
                   optimize_1d=s["optimize_1d"], learning_rate_1d=s["lr_1d"],
                   b1_1d=s["betas_1d"][0], b2_1d=s["betas_1d"][1],
                   weight_decay_1d=s["weight_decay_1d"])


def test_fixture_exercises_both_sides_of_the_clip():
    assert all(0 < f < 1 for f in META["clipped_fraction"].values())


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_each_step_matches_the_authors_mars(case):
    """From the authors' params and moments after step t-1 (and the gradient of step t-1),
    our step t lands on theirs to float32 rounding; each leaf through its own branch."""
    s = settings(case)
    steps = META["steps"]
    x0 = {n: ARRAYS[f"x0/{n}"] for n in LEAVES}
    shift = lambda a, first: np.concatenate([first[None], a[:-1]])  # noqa: E731
    theta = {n: shift(ARRAYS[f"{case}/theta/{n}"], x0[n]) for n in LEAVES}
    mu = {n: shift(ARRAYS[f"{case}/mu/{n}"], np.zeros_like(x0[n])) for n in LEAVES}
    nu = {n: shift(ARRAYS[f"{case}/nu/{n}"], np.zeros_like(x0[n])) for n in LEAVES}
    grads = [gradient({n: theta[n][t] for n in LEAVES}) for t in range(steps)]
    counts = jnp.arange(steps, dtype=jnp.int32)
    for n in LEAVES:
        g = np.stack([gr[n] for gr in grads])
        prev = shift(g, np.zeros_like(g[0]))
        if s["optimize_1d"] or len(x0[n].shape) == 2:
            opt = gx.chain(gx.scale_by_mars(s["betas"][0], b2=s["betas"][1], eps=s["eps"],
                                            gamma=s["gamma"]),
                           gx.add_decayed_weights(s["weight_decay"]),
                           gx.scale_by_learning_rate(s["lr"]))
            first = lambda c, m, v, gp: gx.ScaleByMarsState(c, m, v, gp)  # noqa: E731
        else:
            opt = gx.adamw(s["lr_1d"], b1=s["betas_1d"][0], b2=s["betas_1d"][1],
                           eps=s["eps"], weight_decay=s["weight_decay_1d"])
            first = lambda c, m, v, gp: gx.ScaleByAdamState(c, m, v)  # noqa: E731

        def one_step(p, m, v, gp, gt, count, opt=opt, first=first):
            state = opt.init(p)
            u, _ = opt.update(gt, (first(count, m, v, gp),) + state[1:], p)
            return gx.apply_updates(p, u)

        ours = jax.jit(jax.vmap(one_step))(theta[n], mu[n], nu[n], prev, g, counts)
        np.testing.assert_allclose(ours, ARRAYS[f"{case}/theta/{n}"], rtol=4e-7, atol=4e-7,
                                   err_msg=f"leaf {n}")


@pytest.mark.parametrize("case", sorted(META["cases"]))
def test_trajectory_matches_the_authors_mars(case):
    """The whole run with `mars`, each side on its own: they differ by float32 rounding
    amplified along the trajectory, which the authors' own float64 run measures; ours stays
    within 4 times that distance (the rounding of two float32 runs adds up, and a step reorders
    a few roundings)."""
    opt = optimizer(case)
    params = {n: jnp.asarray(ARRAYS[f"x0/{n}"]) for n in LEAVES}
    state = opt.init(params)
    update = jax.jit(opt.update)
    ours = {n: [] for n in LEAVES}
    for _ in range(META["steps"]):
        u, state = update(gradient(params), state, params)
        params = gx.apply_updates(params, u)
        for n in LEAVES:
            ours[n].append(np.asarray(params[n]))
    for n in LEAVES:
        theirs = ARRAYS[f"{case}/theta/{n}"]
        rounding = np.max(np.abs(theirs - ARRAYS[f"{case}/float64/theta/{n}"]))
        assert rounding < 1e-4, "the float32 run drifted from float64; pick a calmer problem"
        np.testing.assert_allclose(np.stack(ours[n]), theirs, rtol=0, atol=4 * rounding,
                                   err_msg=f"leaf {n}")


@pytest.mark.parametrize("scale", [0.05, 2.0])  # below and above the unit-norm clip
def test_scale_by_mars_step_re_derived_in_numpy(scale):
    rng = np.random.RandomState(0)
    g = (scale * rng.randn(3, 4)).astype(np.float64)
    g_prev = (scale * rng.randn(3, 4)).astype(np.float64)
    m0, v0 = 0.1 * rng.randn(3, 4), 0.01 * rng.rand(3, 4)
    b1, b2, eps, gamma, t = 0.95, 0.99, 1e-8, 0.025, 3
    c = g + gamma * b1 / (1 - b1) * (g - g_prev)
    norm = np.linalg.norm(c)
    c = c / norm if norm > 1 else c
    m = b1 * m0 + (1 - b1) * c
    v = b2 * v0 + (1 - b2) * c * c
    expected = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    tx = gx.scale_by_mars(b1, b2=b2, eps=eps, gamma=gamma)
    state = gx.ScaleByMarsState(count=jnp.asarray(t - 1, jnp.int32),
                                mu={"x": jnp.asarray(m0, jnp.float32)},
                                nu={"x": jnp.asarray(v0, jnp.float32)},
                                prev_grad={"x": jnp.asarray(g_prev, jnp.float32)})
    u, new_state = tx.update({"x": jnp.asarray(g, jnp.float32)}, state)
    np.testing.assert_allclose(u["x"], expected, rtol=2e-5)
    np.testing.assert_allclose(new_state.mu["x"], m, rtol=2e-5, atol=1e-7)
    np.testing.assert_array_equal(new_state.prev_grad["x"], np.float32(g))


def test_mars_sends_only_matrices_through_the_correction():
    opt = gx.mars(1e-2)
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3), "k": jnp.ones((2, 2, 2))}
    state = opt.init(params)
    mars_state = state.inner_states["mars"][0]
    assert isinstance(mars_state, gx.ScaleByMarsState)
    assert mars_state.prev_grad["w"].shape == (2, 3)
    assert mars_state.prev_grad["b"] is None and mars_state.prev_grad["k"] is None


@pytest.mark.parametrize("build, message", [
    (lambda: gx.scale_by_mars(1.0), r"scale_by_mars: b1 must be"),
    (lambda: gx.scale_by_mars(b2=-0.5), r"scale_by_mars: b2 must be"),
    (lambda: gx.scale_by_mars(gamma=-0.1), r"scale_by_mars: gamma must be"),
    (lambda: gx.scale_by_mars(eps=-1.0), r"scale_by_mars: eps must be"),
    (lambda: gx.mars(1e-3, b1_1d=1.5), r"b1 must be"),
])
def test_invalid_hyperparameters_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()
