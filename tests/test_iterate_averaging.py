"""swa_params, polyak_averaging and swa_lr_schedule against their equations in numpy (torch's
own numbers are replayed in tests/test_torch_more_reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx


def _iterates(opt, steps=30):
    """The params after each step and the averaged params after each step (float64)."""
    with jax.enable_x64(True):
        params = {"w": jnp.linspace(-1.0, 2.0, 6, dtype=jnp.float64).reshape(2, 3)}
        state = opt.init(params)
        ps, avgs = [], []
        for t in range(steps):
            grads = {"w": jnp.sin(3 * params["w"]) + 0.1 * t}
            updates, state = opt.update(grads, state, params)
            params = gx.apply_updates(params, updates)
            ps.append(np.asarray(params["w"]))
            avgs.append(np.asarray(gx.averaged_params(state)["w"]))
    return np.stack(ps), np.stack(avgs)


@pytest.mark.parametrize("start, every", [(0, 1), (4, 3)])
def test_swa_is_the_mean_of_the_chosen_iterates(start, every):
    ps, avgs = _iterates(gx.chain(gx.sgd(0.05), gx.swa_params(start=start, every=every)))
    for t in range(len(ps)):
        chosen = [s for s in range(start, t + 1) if (s - start) % every == 0]
        want = ps[chosen].mean(0) if chosen else np.linspace(-1.0, 2.0, 6).reshape(2, 3)
        np.testing.assert_allclose(avgs[t], want, rtol=1e-13, atol=1e-14)


def test_swa_with_decay_is_an_ema_started_at_the_first_average():
    ps, avgs = _iterates(gx.chain(gx.sgd(0.05), gx.swa_params(start=2, decay=0.8)))
    ema = ps[2]
    for t in range(3, len(ps)):
        ema = 0.8 * ema + 0.2 * ps[t]
        np.testing.assert_allclose(avgs[t], ema, rtol=1e-13)


def test_polyak_averaging_is_the_mean_after_t0():
    ps, avgs = _iterates(gx.chain(gx.sgd(0.05), gx.polyak_averaging(5)))
    np.testing.assert_array_equal(avgs[:7], ps[:7])  # μ = 1 up to step t0 + 1
    for t in range(7, len(ps)):
        np.testing.assert_allclose(avgs[t], ps[6:t + 1].mean(0), rtol=1e-13)


def test_averaged_params_refuses_two_averages():
    opt = gx.chain(gx.sgd(0.1), gx.swa_params(), gx.ema_params(0.9))
    state = opt.init({"w": jnp.ones(2)})
    with pytest.raises(LookupError, match="2 averages"):
        gx.averaged_params(state)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_swa_lr_schedule_formula(strategy):
    t = np.arange(40)
    x = np.minimum(1, t / 12)
    a = (1 - np.cos(np.pi * x)) / 2 if strategy == "cos" else x
    got = gx.swa_lr_schedule(0.1, 0.02, anneal_epochs=12, anneal_strategy=strategy).values(40)
    np.testing.assert_allclose(got, a * 0.02 + (1 - a) * 0.1, rtol=1e-6)
    np.testing.assert_allclose(gx.swa_lr_schedule(0.1, 0.02, anneal_epochs=0).values(3), 0.02)


def test_bad_arguments():
    with pytest.raises(ValueError, match="every must be"):
        gx.swa_params(every=0)
    with pytest.raises(ValueError, match="decay must be"):
        gx.swa_params(decay=1.5)
    with pytest.raises(ValueError, match="anneal_strategy must be"):
        gx.swa_lr_schedule(0.1, 0.01, anneal_strategy="step")
