"""MultiSteps, apply_if_finite, lookahead and ema_params: optax's numbers, numpy re-derivations,
and gradient accumulation equal to the big-batch step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx


def lookahead_stepper(opt, params, grads):
    """optax.lookahead keeps (fast, slow) in the params; the gradient is taken at the fast ones."""
    params = optax.LookaheadParams.init_synced(params)

    def step(carry, t):
        p, s = carry
        u, s = opt.update(grads(p.fast, t), s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (p.fast, p.slow)

    return (params, opt.init(params)), step


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_trajectories_as_optax(dtype, mixed_params, noisy_gradients, trajectories):
    with jax.enable_x64(dtype == "float64"):
        params = mixed_params(dtype, head=False)
        grads = noisy_gradients(params)
        nan_grads = noisy_gradients(params, nan_steps=(3, 20, 21, 50, 90, 91, 92))
        acc = jnp.dtype(dtype)  # optax accumulates in float32 by default
        every = lambda step: jnp.where(step < 10, 2, 4)  # noqa: E731
        pairs = {
            "MultiSteps/mean": (
                gx.MultiSteps(gx.sgd(0.1, 0.9), 3),
                optax.MultiSteps(optax.sgd(0.1, 0.9), 3, accumulator_dtype=acc), grads),
            "MultiSteps/sum+schedule": (
                gx.MultiSteps(gx.sgd(0.05, 0.9), every, use_grad_mean=False),
                optax.MultiSteps(optax.sgd(0.05, 0.9), every, use_grad_mean=False,
                                 accumulator_dtype=acc), grads),
            "MultiSteps/skip": (
                gx.MultiSteps(gx.sgd(0.1, 0.9), 3, should_skip_update_fn=gx.skip_not_finite),
                optax.MultiSteps(optax.sgd(0.1, 0.9), 3, accumulator_dtype=acc,
                                 should_skip_update_fn=optax.skip_not_finite), nan_grads),
            "apply_if_finite": (gx.apply_if_finite(gx.sgd(0.1, 0.9), 2),
                                optax.apply_if_finite(optax.sgd(0.1, 0.9), 2), nan_grads),
        }
        steppers = [trajectories.stepper(o, params, g) for ours, theirs, g in pairs.values()
                    for o in (ours, theirs)]
        for reset in (False, True):
            ours = gx.lookahead(gx.sgd(0.1, 0.9), 5, 0.5, reset_state=reset)
            steppers.append(trajectories.stepper(ours, params, grads))
            steppers.append(lookahead_stepper(
                optax.lookahead(optax.sgd(0.1, 0.9), 5, 0.5, reset_state=reset), params, grads))
        outs = trajectories.run(steppers)
        for i, name in enumerate(pairs):
            (ours, _), (theirs, _) = outs[2 * i], outs[2 * i + 1]
            trajectories.assert_close(ours, theirs, dtype, name)
        # the skip rule and the finite check kept NaNs out until apply_if_finite gave up
        assert np.isfinite(np.asarray(outs[4][0]["dense"]["w"])).all()
        np.testing.assert_array_equal(outs[4][1].skip_state["num_not_finite"],
                                      outs[5][1].skip_state["num_not_finite"])
        finite_ours, finite_theirs = outs[6][1], outs[7][1]
        assert np.isfinite(np.asarray(outs[6][0]["dense"]["w"][:92])).all()
        assert np.isnan(np.asarray(outs[6][0]["dense"]["w"][92])).any()  # gave up after 2
        for field in ("notfinite_count", "last_finite", "total_notfinite"):
            np.testing.assert_array_equal(getattr(finite_ours, field),
                                          getattr(finite_theirs, field), err_msg=field)
        for j in (8, 10):  # lookahead, without and with reset_state
            (fast, state), (their_fast, their_slow) = outs[j], outs[j + 1]
            trajectories.assert_close(fast, their_fast, dtype, "lookahead fast")
            trajectories.assert_close(gx.slow_params(state), their_slow, dtype, "lookahead slow")


def test_multisteps_equals_the_big_batch_step(trajectories):
    """k micro-batches of b examples through MultiSteps(adam) = Adam on the k·b batch."""
    with jax.enable_x64(True):
        k, b, d, steps = 4, 8, 3, 25
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.normal(size=(steps, k * b, d)))
        y = jnp.asarray(rng.normal(size=(steps, k * b)))
        loss = lambda w, xb, yb: jnp.mean((xb @ w["w"] + w["b"] - yb) ** 2)  # noqa: E731
        params = {"w": jnp.zeros(d), "b": jnp.zeros(())}

        def train(opt, micro):
            def body(carry, i):  # micro-step i uses rows [j·n, (j+1)·n) of batch i // micro
                p, s = carry
                n = k * b // micro
                xb = jax.lax.dynamic_slice_in_dim(x[i // micro], (i % micro) * n, n)
                yb = jax.lax.dynamic_slice_in_dim(y[i // micro], (i % micro) * n, n)
                u, s = opt.update(jax.grad(loss)(p, xb, yb), s, p)
                return (gx.apply_updates(p, u), s), None
            return jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps * micro))[0]

        (big, _), (acc, acc_state), (summed, _), (big_sgd, _) = jax.jit(lambda: (
            train(gx.adam(0.1), 1), train(gx.MultiSteps(gx.adam(0.1), k), k),
            train(gx.MultiSteps(gx.sgd(0.1), k, use_grad_mean=False), k),
            train(gx.sgd(0.1 * k), 1)))()
        trajectories.assert_close(acc, big, dict(rtol=1e-12, atol=1e-13), "mean")
        trajectories.assert_close(summed, big_sgd, dict(rtol=1e-12, atol=1e-13), "sum")
        assert int(acc_state.gradient_step) == steps
        assert bool(gx.MultiSteps(gx.adam(0.1), k).has_updated(acc_state))


def test_multisteps_emits_zeros_between_steps(mixed_params, noisy_gradients, trajectories):
    params = mixed_params("float32", head=False)
    grads = noisy_gradients(params)
    opt = gx.MultiSteps(gx.sgd(1.0), 3)
    state = opt.init(params)
    total = jax.tree.map(jnp.zeros_like, params)
    for t in range(3):
        g = grads(params, t)
        total = jax.tree.map(lambda a, x: a + x / 3, total, g)
        u, state = opt.update(g, state, params)
        if t < 2:
            assert all(not np.any(x) for x in jax.tree.leaves(u))
            assert not bool(opt.has_updated(state))
    trajectories.assert_close(u, jax.tree.map(lambda x: -x, total), dict(rtol=1e-6, atol=1e-7))
    assert gx.hyperparams(opt, state)["every_k_schedule"] == 3
    assert gx.get_state(opt, state, "scale_by_learning_rate").count == 1


def numpy_sgd_path(params, noise, lr, steps=100):
    """θ_t = θ_{t-1} - η ∇L(θ_{t-1}) with ∇L(θ) = θ - ½ + noise_t, in float64."""
    theta = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for t in range(steps):
        theta = {k: v - lr * (v - 0.5 + noise[k][t]) for k, v in theta.items()}
        yield t, theta


def flat_params():
    rng = np.random.default_rng(4)
    return {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,)), "s": np.asarray(rng.normal())}


def test_lookahead_matches_the_paper_in_numpy(gradient_noise, noisy_gradients, trajectories):
    """Zhang et al. 2019, Algorithm 1 with SGD as the inner optimizer, written out in numpy."""
    k, alpha, lr = 5, 0.5, 0.1
    params = flat_params()
    noise = gradient_noise(params)
    theta = {n: np.asarray(v, np.float64) for n, v in params.items()}
    phi = dict(theta)
    fast_path, slow_path = [], []
    for t in range(100):
        theta = {n: v - lr * (v - 0.5 + noise[n][t]) for n, v in theta.items()}   # fast step
        if (t + 1) % k == 0:
            phi = {n: phi[n] + alpha * (theta[n] - phi[n]) for n in phi}            # slow step
            theta = dict(phi)                                                       # reset
        fast_path.append(theta)
        slow_path.append(phi)
    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, params)
        opt = gx.lookahead(gx.sgd(lr), sync_period=k, slow_step_size=alpha)
        grads = noisy_gradients(p, noise=noise)
        ((fast, state),) = trajectories.run([trajectories.stepper(opt, p, grads)])
        stack = lambda path: {n: np.stack([q[n] for q in path]) for n in params}  # noqa: E731
        trajectories.assert_close(fast, stack(fast_path), dict(rtol=1e-12, atol=1e-12), "fast")
        trajectories.assert_close(gx.slow_params(state), stack(slow_path),
                           dict(rtol=1e-12, atol=1e-12), "slow")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ema_params_matches_numpy(dtype, gradient_noise, noisy_gradients, trajectories):
    """θ̄_t = γ_t θ̄_{t-1} + (1 - γ_t) θ_t, from θ_0 or from 0 with debiasing, with warmup."""
    decay, lr = 0.9, 0.1
    params = flat_params()
    noise = gradient_noise(params)
    variants = {"plain": dict(), "debias": dict(debias=True), "warmup": dict(warmup=10.0),
                "debias+warmup": dict(debias=True, warmup=10.0)}
    expected = {}
    for name, kw in variants.items():
        ema = {n: np.zeros_like(v) if kw.get("debias") else np.asarray(v, np.float64)
               for n, v in params.items()}
        weight, path = (0.0 if kw.get("debias") else 1.0), []
        for t, theta in numpy_sgd_path(params, noise, lr):
            gamma = min(decay, (1 + t) / (kw["warmup"] + t)) if "warmup" in kw else decay
            ema = {n: gamma * ema[n] + (1 - gamma) * theta[n] for n in ema}
            weight = gamma * weight + (1 - gamma) if kw.get("debias") else 1.0
            path.append({n: ema[n] / weight for n in ema})
        expected[name] = {n: np.stack([q[n] for q in path]) for n in params}
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-13)
    with jax.enable_x64(dtype == "float64"):
        p = jax.tree.map(lambda v: jnp.asarray(v, dtype), params)
        opts = {name: gx.chain(gx.sgd(lr), gx.ema_params(decay, **kw))
                for name, kw in variants.items()}
        grads = noisy_gradients(p, noise=noise)
        outs = trajectories.run([trajectories.stepper(o, p, grads) for o in opts.values()])
        for name, (_, states) in zip(opts, outs):
            averaged = jax.vmap(gx.averaged_params)(states)
            trajectories.assert_close(averaged, expected[name], tol, name)
        debias_weight = outs[1][1][1].weight
        np.testing.assert_allclose(debias_weight, 1 - decay ** np.arange(1, 101), rtol=1e-5)


def test_helpers_explain_what_is_missing():
    params = flat_params()
    state = gx.adam(1e-3).init(params)
    with pytest.raises(LookupError, match=r"slow_params: the state holds 0 LookaheadState"):
        gx.slow_params(state)
    with pytest.raises(LookupError, match=r"averaged_params: the state holds 0 EmaParamsState"):
        gx.averaged_params(state)
    opt = gx.lookahead(gx.sgd(0.1), 5, 0.5)
    with pytest.raises(ValueError, match=r"lookahead.update: params \(the fast weights\) are "
                                         r"required"):
        opt.update(params, opt.init(params))
    with pytest.raises(ValueError, match=r"MultiSteps: every_k_schedule must be an integer >= 1, "
                                         r"got 0"):
        gx.MultiSteps(gx.sgd(0.1), 0)
    with pytest.raises(ValueError, match=r"ema_params: warmup must be > 1, got 1.0"):
        gx.ema_params(0.9, warmup=1.0)


def test_apply_every_matches_optax(x64, mixed_params, noisy_gradients, trajectories):
    params = mixed_params("float64")
    grads = noisy_gradients(params)
    steppers = [trajectories.stepper(o, params, grads) for o in (
        gx.chain(gx.sgd(0.1, 0.9), gx.apply_every(3)),
        optax.chain(optax.sgd(0.1, 0.9), optax.apply_every(3)),
        gx.chain(gx.adam(1e-2), gx.apply_every()),
        optax.chain(optax.adam(1e-2), optax.apply_every()))]
    outs = trajectories.run(steppers, steps=30)
    trajectories.assert_close(outs[0][0], outs[1][0], "float64", "apply_every(3)")
    trajectories.assert_close(outs[2][0], outs[3][0], "float64", "apply_every(1)")
    w = np.asarray(outs[0][0]["dense"]["w"])
    np.testing.assert_array_equal(w[0], w[1])          # held for two steps, then the sum
    assert not np.allclose(w[1], w[2])
    with pytest.raises(ValueError, match="apply_every: k must be an integer >= 1, got 0"):
        gx.apply_every(0)
