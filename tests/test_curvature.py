"""Sophia: the estimators against exact diagonals, the update against numpy and optax, a run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform._src.presets.contrib import sophia
from gradxform._src.primitives.curvature import (
    SophiaState,
    gauss_newton_bartlett_diagonal,
    hutchinson_diagonal,
    scale_by_sophia,
)
from gradxform.testing import check_transformation, default_params

# -- estimators -----------------------------------------------------------------------------------


def test_hutchinson_is_exact_on_a_separable_loss():
    """A separable loss has a diagonal Hessian, and u_i² = 1: every sample is the diagonal."""
    rng = np.random.RandomState(0)
    a = rng.uniform(0.5, 2.0, (3, 4))
    c = rng.uniform(0.5, 2.0, 5)
    params = {"w": jnp.asarray(rng.randn(3, 4), jnp.float32),
              "b": jnp.asarray(rng.randn(5), jnp.float32)}

    def f(p):  # ½ Σ a w² + Σ c sin(b)
        return 0.5 * jnp.sum(a * p["w"] ** 2) + jnp.sum(c * jnp.sin(p["b"]))

    est = hutchinson_diagonal(f, params, jax.random.key(0))
    np.testing.assert_allclose(est["w"], a, rtol=1e-6)
    np.testing.assert_allclose(est["b"], -c * np.sin(np.asarray(params["b"], np.float64)),
                               rtol=1e-5, atol=1e-6)


def test_hutchinson_converges_to_the_diagonal_of_a_coupled_quadratic():
    """f = ½ θᵀ H θ with H dense: the average of N samples approaches diag H as 1/√N.

    Var[ĥ_i] = Σ_{j≠i} H_ij², so the error bound is a number computed from H alone.
    """
    rng = np.random.RandomState(1)
    q = rng.randn(6, 6)
    H = q @ q.T / 6 + np.eye(6)
    theta = jnp.asarray(rng.randn(6), jnp.float32)
    f = lambda x: 0.5 * x @ jnp.asarray(H, jnp.float32) @ x  # noqa: E731
    sigma = np.sqrt((H**2).sum(1) - np.diag(H) ** 2)
    errors = {}
    for n in (16, 4096):
        est = hutchinson_diagonal(f, theta, jax.random.key(2), num_samples=n)
        errors[n] = np.abs(np.asarray(est) - np.diag(H))
        assert np.all(errors[n] < 5 * sigma / np.sqrt(n)), (n, errors[n], sigma)
    assert errors[4096].max() < errors[16].max() / 4


def test_gauss_newton_bartlett_converges_to_the_gauss_newton_diagonal():
    """A linear softmax model, logits = x W: the Gauss-Newton diagonal of the mean cross-entropy
    is (1/B) Σ_b x_bi² p_bk (1 - p_bk) (here also the exact Hessian diagonal), re-derived in
    numpy; the average of N estimates approaches it within a few standard errors."""
    rng = np.random.RandomState(3)
    x = rng.randn(8, 3)
    w = rng.randn(3, 4) * 0.5
    logits = x @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = (x**2).T @ (p * (1 - p)) / len(x)

    params = {"w": jnp.asarray(w, jnp.float32)}
    logits_fn = lambda q: jnp.asarray(x, jnp.float32) @ q["w"]  # noqa: E731
    keys = jax.random.split(jax.random.key(4), 4000)
    samples = jax.jit(jax.vmap(lambda k: gauss_newton_bartlett_diagonal(logits_fn, params, k)))(
        keys)["w"]
    samples = np.asarray(samples, np.float64)
    stderr = samples.std(0) / np.sqrt(len(samples))
    assert np.all(np.abs(samples.mean(0) - expected) < 5 * stderr + 1e-7)
    assert np.all(samples >= 0)


# -- the update -----------------------------------------------------------------------------------


def numpy_sophia(grads, hessians, *, b1, b2, eps, gamma, rho, debias):
    """The paper's equations, step by step; hessians[t] is None where there is no refresh."""
    m = np.zeros_like(grads[0])
    h = np.zeros_like(grads[0])
    out = []
    for t, (g, e) in enumerate(zip(grads, hessians), start=1):
        m = b1 * m + (1 - b1) * g
        if e is not None:
            h = b2 * h + (1 - b2) * e
        m_hat = m / (1 - b1**t) if debias else m
        out.append(np.clip(m_hat / np.maximum(gamma * h, eps), -rho, rho))
    return out


@pytest.mark.parametrize("debias", [True, False])
def test_update_matches_the_equations(debias):
    rng = np.random.RandomState(5)
    steps = 8
    grads = [rng.randn(20) for _ in range(steps)]
    # Refresh at steps 1, 4, 7; estimates of both signs and spread magnitudes (some clipped).
    hessians = [np.exp(rng.randn(20) * 2) * rng.choice([-1, 1, 1, 1], 20) * 50
                if t % 3 == 0 else None for t in range(steps)]
    hp = dict(b1=0.9, b2=0.95, eps=1e-3, gamma=0.05, rho=1.0)
    expected = numpy_sophia(grads, hessians, debias=debias, **hp)
    t = scale_by_sophia(hp["b1"], b2=hp["b2"], eps=hp["eps"], gamma=hp["gamma"],
                        clip_threshold=hp["rho"], debias=debias)
    with jax.enable_x64(True):
        state = t.init(jnp.zeros(20))
        for g, e, want in zip(grads, hessians, expected):
            extra = {} if e is None else {"hessian": jnp.asarray(e)}
            u, state = t.update(jnp.asarray(g), state, **extra)
            np.testing.assert_allclose(u, want, rtol=1e-12, atol=1e-14)
        clipped = np.abs(np.asarray(u)) == 1.0
        assert 0 < clipped.sum() < 20  # both regimes are exercised


def test_every_coordinate_moves_at_most_the_learning_rate():
    """|Δθ_i| ≤ η ρ whatever the gradients and the curvature (tiny, zero, negative, stale)."""
    eta, rho = 0.01, 1.0
    opt = sophia(eta, weight_decay=0.0, clip_threshold=rho)
    rng = np.random.RandomState(6)
    params = {"w": jnp.asarray(rng.randn(5, 7), jnp.float32)}
    state = opt.init(params)
    biggest = 0.0
    for t in range(30):
        g = {"w": jnp.asarray(rng.randn(5, 7) * 10 ** rng.uniform(-6, 6), jnp.float32)}
        extra = {}
        if t % 5 == 0:
            e = rng.randn(5, 7) * 10 ** rng.uniform(-8, 4, (5, 7))
            e[0] = 0.0
            extra = {"hessian": {"w": jnp.asarray(e, jnp.float32)}}
        u, state = opt.update(g, state, params, **extra)
        new = gx.apply_updates(params, u)
        step = np.abs(np.asarray(u["w"]))
        biggest = max(biggest, step.max())
        assert step.max() <= np.float32(eta * rho)
        # θ + u is rounded to float32: the params move by η ρ plus at most half an ulp of θ.
        moved = np.abs(np.asarray(new["w"], np.float64) - np.asarray(params["w"], np.float64))
        assert np.all(moved <= eta * rho + np.spacing(np.abs(np.asarray(new["w"]))))
        params = new
    assert biggest == np.float32(eta * rho)  # the bound is reached


def test_same_numbers_as_optax_sophia():
    """optax's contrib.sophia computes the estimate after its step and uses it from the next
    step on; given here the same estimate one step later, gradxform follows its trajectory.

    The estimator is the exact diagonal of a separable loss, so both sides see the same numbers.
    """
    k = 3
    a = jnp.asarray([[1.0, 4.0, 0.3], [2.0, 0.5, 8.0]], jnp.float32)

    def loss(p):
        return jnp.sum(0.5 * a * p["w"] ** 2 + jnp.sin(3 * p["w"])) + jnp.sum(p["b"] ** 4)

    def diag(p):
        return {"w": a - 9 * jnp.sin(3 * p["w"]), "b": 12 * p["b"] ** 2}

    exact = optax.GradientTransformationExtraArgs(
        lambda p: optax.EmptyState(), lambda u, s, params=None, **kw: (diag(params), s))
    hp = dict(b1=0.9, b2=0.95, weight_decay=0.01, gamma=0.05)
    theirs_opt = optax.contrib.sophia(0.05, update_interval=k, hessian_diagonal_fn=exact, **hp)
    ours_opt = sophia(0.05, **hp)
    params = {"w": jnp.asarray([[1.0, -0.5, 2.0], [0.3, 1.5, -1.0]], jnp.float32),
              "b": jnp.asarray([0.7, -1.2], jnp.float32)}

    def theirs_run(p):
        def body(carry, _):
            p, s = carry
            u, s = theirs_opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), p
        return jax.lax.scan(body, (p, theirs_opt.init(p)), None, length=40)[1]

    def ours_run(p):
        def body(carry, t):
            p, prev, s = carry
            g = jax.grad(loss)(p)
            u, s = jax.lax.cond(
                t % k == 1,
                lambda: ours_opt.update(g, s, p, hessian=diag(prev)),
                lambda: ours_opt.update(g, s, p))
            return (gx.apply_updates(p, u), p, s), p
        return jax.lax.scan(body, (p, p, ours_opt.init(p)), jnp.arange(40))[1]

    theirs = jax.jit(theirs_run)(params)
    ours = jax.jit(ours_run)(params)
    for name in params:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=2e-5, atol=2e-6, err_msg=name)
    assert float(jnp.abs(ours["w"][-1] - ours["w"][0]).max()) > 0.3


def test_a_small_mlp_trains_with_gauss_newton_bartlett_refreshes():
    """A 2-layer MLP on 3 Gaussian blobs: Sophia-G, refreshed every 10 steps, fits the data."""
    rng = np.random.RandomState(7)
    centers = rng.randn(3, 2) * 2.5
    labels = np.repeat(np.arange(3), 32)
    x = jnp.asarray(centers[labels] + rng.randn(96, 2), jnp.float32)
    y = jnp.asarray(labels)
    k1, k2 = jax.random.split(jax.random.key(8))
    params = {"w1": jax.random.normal(k1, (2, 16)) * 0.5, "b1": jnp.zeros(16),
              "w2": jax.random.normal(k2, (16, 3)) * 0.5, "b2": jnp.zeros(3)}

    def logits_fn(p):
        return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss(p):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits_fn(p)), y[:, None], 1))

    opt = sophia(0.05, gamma=0.05, weight_decay=0.0)

    def body(carry, t):
        p, s, key = carry
        key, sub = jax.random.split(key)
        g = jax.grad(loss)(p)
        u, s = jax.lax.cond(
            t % 10 == 0,
            lambda: opt.update(g, s, p, hessian=gauss_newton_bartlett_diagonal(logits_fn, p, sub)),
            lambda: opt.update(g, s, p))
        return (gx.apply_updates(p, u), s, key), loss(p)

    (final, state, _), losses = jax.jit(lambda p: jax.lax.scan(
        body, (p, opt.init(p), jax.random.key(9)), jnp.arange(150)))(params)
    assert float(loss(final)) < 0.25 * float(losses[0]), (float(losses[0]), float(loss(final)))
    assert float(jnp.min(state[0].hessian["w1"])) >= 0  # Gauss-Newton estimates are ≥ 0


def test_conformance_with_hessian_refreshes():
    def with_hessian(p):
        return {"hessian": jax.tree.map(lambda x: jnp.abs(x) + jnp.asarray(0.5, x.dtype), p)}

    params = default_params()
    check_transformation(sophia(1e-2), params, extra_args=with_hessian(params),
                         make_extra_args=with_hessian)


def test_updates_without_any_hessian_estimate_are_refused():
    """gx.sophia(lr) updated without hessian= would keep h = 0 and run as clipped sign momentum."""
    opt = sophia(1e-2)
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    message = r"scale_by_sophia.update: no Hessian estimate has been passed in the first two"
    state = opt.init(params)
    _, state = opt.update(params, state, params)      # the first may go without (optax's order)
    with pytest.raises(ValueError, match=message):
        opt.update(params, state, params)
    step = jax.jit(lambda s: opt.update(params, s, params)[1])
    with pytest.raises(Exception, match=message):      # raised by the compiled step when it runs
        jax.block_until_ready(step(step(opt.init(params))))
    # one estimate, at the first or the second update, is enough for the steps that follow
    hessian = jax.tree.map(jnp.ones_like, params)
    refresh = jax.jit(lambda s: opt.update(params, s, params, hessian=hessian)[1])
    for refresh_at in (0, 1):
        state = opt.init(params)
        for t in range(4):
            state = (refresh if t == refresh_at else step)(state)
        assert int(jax.block_until_ready(state[0].estimates)) == 1


def test_hessian_of_another_shape_is_refused():
    t = scale_by_sophia()
    g = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match="hessian"):
        t.update(g, t.init(g), hessian={"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match="gamma must be > 0"):
        scale_by_sophia(gamma=0.0)
    assert isinstance(t.init(g), SophiaState)
