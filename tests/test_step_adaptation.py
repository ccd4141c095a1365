"""Adadelta and Rprop against optax (same names, arguments and numbers) and the equations in
numpy; torch's forms are replayed against torch in tests/test_torch_more_reference.py.

Trajectories are 100 steps on a non-quadratic loss over a matrix, a vector and a 3-D leaf, so
each gradient depends on where the previous steps went.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

STEPS = 100


def _loss(p):
    return (jnp.sum(jnp.sin(3.0 * p["w"]) * p["w"]) + jnp.sum((p["b"] - 0.5) ** 4)
            + jnp.sum(jnp.cos(p["k"]) * p["k"] ** 2) / 4)


def _grads(p, t):
    return jax.grad(_loss)(p)


def _params(dtype):
    rng = np.random.RandomState(1)
    return {"w": jnp.asarray(rng.randn(4, 3), dtype), "b": jnp.asarray(rng.randn(3), dtype),
            "k": jnp.asarray(rng.randn(2, 3, 2), dtype)}


# name -> factory of the library, called the same way on both sides
PAIRS = {
    "scale_by_adadelta_args": lambda lib: lib.chain(lib.scale_by_adadelta(0.5, 1e-3),
                                                    lib.scale(-2.0)),
    "adadelta": lambda lib: lib.adadelta(1.0),
    "adadelta_weight_decay": lambda lib: lib.adadelta(4.0, 0.95, 1e-5, weight_decay=0.1,
                                                      weight_decay_mask={"w": True, "b": False,
                                                                         "k": True}),
    "rprop": lambda lib: lib.rprop(0.01),
    "rprop_args": lambda lib: lib.rprop(0.02, 0.3, 1.5, 1e-3, 0.05),
}


def _pair(trajectories, make, dtype):
    params = _params(dtype)
    (ours, _), (theirs, _) = trajectories.run(
        [trajectories.stepper(make(gx), params, _grads),
         trajectories.stepper(make(optax), params, _grads)], STEPS)
    return ours, theirs


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax(name, trajectories):
    with jax.enable_x64(True):
        ours, theirs = _pair(trajectories, PAIRS[name], jnp.float64)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(ours))
        moved = max(float(jnp.max(jnp.abs(x[-1] - x[0]))) for x in jax.tree.leaves(ours))
        assert moved > 1e-2, f"{name}: the params barely moved, the comparison says little"
        trajectories.assert_close(ours, theirs, dict(rtol=1e-12, atol=1e-13), name)
    ours, theirs = _pair(trajectories, PAIRS[name], jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ours))
    trajectories.assert_close(ours, theirs, "float32", f"{name} (float32)")


def test_adadelta_without_learning_rate_descends():
    # optax 0.2.8's adadelta(learning_rate=None) returns +Δθ (no scaling, no sign flip): it
    # climbs. gradxform's None is the paper's η = 1, a descent step.
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([0.5, -0.25])}
    ours, _ = gx.adadelta().update(grads, gx.adadelta().init(params), params)
    theirs, _ = optax.adadelta().update(grads, optax.adadelta().init(params), params)
    np.testing.assert_allclose(ours["w"], -np.asarray(theirs["w"]), rtol=1e-7)
    assert np.all(np.sign(ours["w"]) == -np.sign(grads["w"]))


# -- the equations in numpy (float64), one coordinate array at a time --------------------------

def _adadelta_np(g_seq, rho, eps):
    e_g = e_x = np.zeros_like(g_seq[0])
    out = []
    for g in g_seq:
        e_g = rho * e_g + (1 - rho) * g**2
        u = np.sqrt(e_x + eps) / np.sqrt(e_g + eps) * g
        e_x = rho * e_x + (1 - rho) * u**2
        out.append(u)
    return out


def _rprop_torch_np(g_seq, lr, eta_minus, eta_plus, lo, hi):
    """torch.optim.Rprop's loop, written out."""
    step, prev, out = np.full_like(g_seq[0], lr), np.zeros_like(g_seq[0]), []
    for g in g_seq:
        s = np.sign(g * prev)
        step = np.clip(step * np.where(s > 0, eta_plus, np.where(s < 0, eta_minus, 1.0)), lo, hi)
        g = np.where(s < 0, 0.0, g)
        out.append(np.sign(g) * step)
        prev = g
    return out


def _sequence(shape=(5, 4), steps=40):
    rng = np.random.RandomState(3)
    seq = rng.randn(steps, *shape)
    seq[::7] *= -1  # sign flips
    seq[5, 0, 0] = 0.0  # a zero gradient: s_t = 0 on this and the next step
    return seq


def _directions(transform, seq):
    with jax.enable_x64(True):
        params = jnp.zeros(seq.shape[1:], jnp.float64)
        state = transform.init(params)
        out = []
        for g in seq:
            u, state = transform.update(jnp.asarray(g), state, params)
            out.append(np.asarray(u))
    return out


def test_adadelta_is_zeilers_algorithm():
    seq = _sequence()
    got = _directions(gx.scale_by_adadelta(0.8, 1e-4), seq)
    np.testing.assert_allclose(got, _adadelta_np(seq, 0.8, 1e-4), rtol=1e-13, atol=1e-15)


def test_rprop_torch_convention_is_torchs_loop():
    seq = _sequence()
    # Δ_0 = 0.3 outside [Δ_min, Δ_max]: torch clips it at the first step, optax would not
    args = (0.3, 0.5, 1.2, 1e-3, 0.2)
    got = _directions(gx.scale_by_rprop(*args, convention="torch"), seq)
    np.testing.assert_allclose(got, _rprop_torch_np(seq, *args), rtol=1e-14, atol=0)
    # the two conventions differ: optax's steps come one step late
    optax_form = _directions(gx.scale_by_rprop(*args), seq)
    assert np.all(optax_form[0] == 0) and not np.allclose(optax_form[1], got[1])


def test_rprop_validates_its_arguments():
    with pytest.raises(ValueError, match="eta_minus must be in"):
        gx.scale_by_rprop(0.1, eta_minus=1.5)
    with pytest.raises(ValueError, match="convention must be"):
        gx.scale_by_rprop(0.1, convention="keras")
    with pytest.raises(ValueError, match="rho must be in"):
        gx.scale_by_adadelta(1.0)
