"""Schedule-Free SGD and AdamW: optax's contrib version, the paper's equations in numpy, a run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform._src.composition.schedule_free_wrapper import (
    ScheduleFreeState,
    schedule_free,
    schedule_free_eval_params,
)
from gradxform._src.presets.contrib import schedule_free_adamw, schedule_free_sgd

STEPS = 40


def _params(dtype):
    rng = np.random.RandomState(0)
    return {"w": jnp.asarray(rng.randn(4, 3), dtype), "b": jnp.asarray(rng.randn(3), dtype)}


def _loss(p):
    return (jnp.sum(jnp.sin(3.0 * p["w"]) * p["w"]) + jnp.sum((p["b"] - 0.5) ** 2)
            + jnp.sum(p["w"] @ p["b"]) / 10)


def _run(opt, apply, eval_params, params):
    """Trajectories of the training params y and of the evaluation params x."""
    def body(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(_loss)(p), s, p)
        p = apply(p, u)
        return (p, s), (p, eval_params(s, p))

    return jax.lax.scan(body, (params, opt.init(params)), None, length=STEPS)[1]


OPTAX_PAIRS = {
    "sgd": (lambda: schedule_free_sgd(0.05, b1=0.8),
            lambda: optax.contrib.schedule_free_sgd(0.05, b1=0.8)),
    "sgd_weight_decay": (lambda: schedule_free_sgd(0.05, weight_decay=0.1, weight_lr_power=1.0),
                         lambda: optax.contrib.schedule_free_sgd(0.05, weight_decay=0.1,
                                                                 weight_lr_power=1.0)),
    "adamw": (lambda: schedule_free_adamw(0.02, weight_decay=0.05),
              lambda: optax.contrib.schedule_free_adamw(0.02, weight_decay=0.05)),
    "wrapper": (lambda: schedule_free(gx.sgd(0.03), 0.03, b1=0.95),
                lambda: optax.contrib.schedule_free(optax.sgd(0.03), 0.03, b1=0.95)),
}


@pytest.mark.parametrize("name, dtype", [
    ("sgd", jnp.float32), ("sgd_weight_decay", jnp.float64), ("adamw", jnp.float32),
    ("adamw", jnp.float64), ("wrapper", jnp.float64)])
def test_same_numbers_as_optax(name, dtype):
    ours_fn, theirs_fn = OPTAX_PAIRS[name]
    with jax.enable_x64(dtype == jnp.float64):
        params = _params(dtype)
        ours = jax.jit(lambda p: _run(ours_fn(), gx.apply_updates, schedule_free_eval_params,
                                      p))(params)
        theirs = jax.jit(lambda p: _run(theirs_fn(), optax.apply_updates,
                                        lambda s, p: optax.contrib.schedule_free_eval_params(
                                            s, p), p))(params)
        rtol, atol = (2e-5, 2e-6) if dtype == jnp.float32 else (1e-12, 1e-13)
        for seq, (a, b) in zip(("y", "x"), zip(ours, theirs)):
            for k in params:
                assert a[k].dtype == dtype
                np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol,
                                           err_msg=f"{name} {seq} {k}")
        assert float(jnp.abs(ours[0]["w"][-1] - params["w"]).max()) > 0.1


def numpy_schedule_free(grad, y0, steps, *, lr, warmup, b1, power, weight_decay, adam_b2=None,
                        eps=1e-8):
    """The paper's Algorithm 1 as in its reference implementation, with x stored explicitly.

    γ_t = lr · min(1, (t + 1)/warmup), c_{t+1} = max γ^p / Σ max γ^p; SGD steps z by
    γ_t (g + λ y), AdamW by γ_t (g / (√(v_t / (1 - β2^{t+1})) + ε) + λ y).
    """
    x = z = y = np.asarray(y0, np.float64)
    v = np.zeros_like(y)
    lr_max = weight_sum = 0.0
    ys, xs = [], []
    for t in range(steps):
        gamma = lr * min(1.0, (t + 1) / warmup)
        lr_max = max(lr_max, gamma)
        weight = lr_max**power
        weight_sum += weight
        c = weight / weight_sum
        g = grad(y)
        if adam_b2 is None:
            step = g + weight_decay * y
        else:
            v = adam_b2 * v + (1 - adam_b2) * g * g
            step = g / (np.sqrt(v / (1 - adam_b2 ** (t + 1))) + eps) + weight_decay * y
        z = z - gamma * step
        x = (1 - c) * x + c * z
        y = (1 - b1) * z + b1 * x
        ys.append(y)
        xs.append(x)
    return np.stack(ys), np.stack(xs)


def _quadratic_problem():
    rng = np.random.RandomState(1)
    q = rng.randn(5, 5)
    A = q @ q.T / 5 + 0.1 * np.eye(5)
    b = rng.randn(5)
    y0 = rng.randn(5)
    return A, b, y0


@pytest.mark.parametrize("variant", ["sgd", "adamw"])
def test_matches_the_equations_with_warmup(variant):
    """float64, 30 steps. The warmup schedule is evaluated in float64, as the run is, and its
    values γ/3, 2γ/3, γ are exact binary fractions."""
    A, b, y0 = _quadratic_problem()
    if variant == "sgd":
        opt = schedule_free_sgd(0.375, warmup_steps=3, b1=0.9, weight_decay=0.01)
        kw = dict(lr=0.375, warmup=3, b1=0.9, power=2.0, weight_decay=0.01)
    else:
        opt = schedule_free_adamw(0.09375, warmup_steps=3, b1=0.9, b2=0.99, weight_decay=0.02)
        kw = dict(lr=0.09375, warmup=3, b1=0.9, power=2.0, weight_decay=0.02, adam_b2=0.99)
    ys, xs = numpy_schedule_free(lambda y: A @ y - b, y0, 30, **kw)
    with jax.enable_x64(True):
        y = jnp.asarray(y0)
        state = opt.init(y)
        step = jax.jit(opt.update)
        for t in range(30):
            u, state = step(jnp.asarray(A) @ y - jnp.asarray(b), state, y)
            y = gx.apply_updates(y, u)
            np.testing.assert_allclose(y, ys[t], rtol=1e-11, atol=1e-12, err_msg=f"y, step {t}")
            np.testing.assert_allclose(schedule_free_eval_params(state, y), xs[t], rtol=1e-11,
                                       atol=1e-12, err_msg=f"x, step {t}")
        assert np.abs(ys[-1] - y0).max() > 0.5


def test_averaged_params_beat_the_last_iterate_on_a_noisy_problem():
    """Stochastic least squares at a constant learning rate: SGD's last iterate stays in a noise
    ball around the optimum, schedule-free's x averages the noise away (300 steps of batch 4,
    γ = 0.2)."""
    rng = np.random.RandomState(2)
    d, n = 8, 400
    w_star = rng.randn(d)
    feats = rng.randn(n, d)
    targets = feats @ w_star + 0.5 * rng.randn(n)
    batches = rng.randint(0, n, (300, 4))

    def loss(w, idx):
        r = jnp.asarray(feats)[idx] @ w - jnp.asarray(targets)[idx]
        return 0.5 * jnp.mean(r * r)

    full = lambda w: loss(w, jnp.arange(n))  # noqa: E731

    def train(opt, evaluate):
        def body(carry, idx):
            w, s = carry
            u, s = opt.update(jax.grad(loss)(w, idx), s, w)
            return (gx.apply_updates(w, u), s), None
        (w, s), _ = jax.lax.scan(body, (jnp.zeros(d), opt.init(jnp.zeros(d))),
                                 jnp.asarray(batches))
        return full(evaluate(s, w))

    sgd_loss = jax.jit(lambda: train(gx.sgd(0.2), lambda s, w: w))()
    sf_loss = jax.jit(lambda: train(schedule_free_sgd(0.2), schedule_free_eval_params))()
    optimum = full(jnp.asarray(np.linalg.lstsq(feats, targets, rcond=None)[0]))
    # Excess losses measured: SGD 0.030, schedule-free 0.0023.
    assert float(sf_loss - optimum) < 0.25 * float(sgd_loss - optimum), (sf_loss, sgd_loss,
                                                                          optimum)


def test_eval_params_found_inside_a_chain_and_errors():
    params = _params(jnp.float32)
    opt = gx.chain(gx.clip_by_global_norm(1.0), schedule_free_sgd(0.1))
    state = opt.init(params)
    x = schedule_free_eval_params(state, params)
    for k in params:  # before any step x = y = z
        np.testing.assert_allclose(x[k], params[k], rtol=1e-6)
    with pytest.raises(LookupError, match="ScheduleFreeState"):
        schedule_free_eval_params(gx.adam(0.1).init(params), params)
    with pytest.raises(ValueError, match="b1 must be in"):
        schedule_free_sgd(0.1, b1=0.0)
    with pytest.raises(ValueError, match="params"):
        t = schedule_free_sgd(0.1)
        t.update(params, t.init(params))
    assert isinstance(state[1], ScheduleFreeState)
    warm = schedule_free_sgd(0.3, warmup_steps=3)
    read = gx.hyperparams(warm, warm.init(params))
    assert float(read["learning_rate"]) == pytest.approx(0.1)  # γ (t + 1)/W at t = 0
    base = read["base_optimizer"]
    assert float(base["scale_by_learning_rate"]["learning_rate"]) == pytest.approx(0.1)
