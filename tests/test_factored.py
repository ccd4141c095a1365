"""Adafactor: optax's numbers, the paper's Algorithms 4-5 re-derived in numpy, the memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform._src.presets.alias import adafactor
from gradxform._src.primitives.factored import FactoredState, scale_by_factored_rms


def _params(dtype):
    rng = np.random.RandomState(0)
    return {"w": jnp.asarray(rng.randn(6, 4), dtype), "k": jnp.asarray(rng.randn(2, 5, 4), dtype),
            "b": jnp.asarray(rng.randn(5), dtype)}


def _loss(p):
    return (jnp.sum(jnp.sin(p["w"]) * p["w"]) + jnp.sum(jnp.cos(p["k"]) * p["k"] ** 2) / 3
            + jnp.sum((p["b"] - 0.5) ** 2) + jnp.sum(p["w"][:5] * p["b"][:, None]) / 10)


CASES = {
    "factored": dict(learning_rate=0.05, min_dim_size_to_factor=4),
    "momentum_decay": dict(learning_rate=0.1, min_dim_size_to_factor=4, momentum=0.9,
                           weight_decay_rate=0.01, decay_rate=0.7, clipping_threshold=0.5),
    "unfactored_absolute": dict(learning_rate=0.05, factored=False,
                                multiply_by_parameter_scale=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_numbers_as_optax(case, trajectories):
    kwargs = CASES[case]
    params = _params(jnp.float32)
    ours = jax.jit(lambda p: trajectories.on_loss(adafactor(**kwargs), gx.apply_updates, p,
                                                  _loss, steps=50))(params)
    theirs = jax.jit(lambda p: trajectories.on_loss(optax.adafactor(**kwargs),
                                                    optax.apply_updates, p, _loss,
                                                    steps=50))(params)
    for k in params:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=2e-5, atol=2e-6, err_msg=k)
        assert float(jnp.abs(ours[k][-1] - ours[k][0]).max()) > 0.1


def numpy_adafactor(grad, x0: dict, steps, *, rho, min_dim, d=1.0, eps1=1e-30, eps2=1e-3,
                    c=0.8):
    """The paper's Algorithms 4 (factored, per trailing matrix) and 5 (vectors), with row and
    column *sums*, update clipping by d and the relative step α_t = max(ε2, RMS(X_{t-1})) ρ."""
    x = {k: np.asarray(v, np.float64) for k, v in x0.items()}
    R, C, V = {}, {}, {}
    out = []
    for t in range(1, steps + 1):
        beta = 1 - t ** (-c)
        g = grad(x)
        new = {}
        for k, gk in g.items():
            sq = gk**2 + eps1
            if gk.ndim >= 2 and min(gk.shape[-2:]) >= min_dim:
                # rows = second to last axis, columns = last axis of each trailing matrix.
                R[k] = beta * R.get(k, 0) + (1 - beta) * sq.sum(-1)
                C[k] = beta * C.get(k, 0) + (1 - beta) * sq.sum(-2)
                v_hat = R[k][..., :, None] * C[k][..., None, :] / R[k].sum(-1)[..., None, None]
            else:
                V[k] = beta * V.get(k, 0) + (1 - beta) * sq
                v_hat = V[k]
            u = gk / np.sqrt(v_hat)
            u_hat = u / max(1.0, np.sqrt(np.mean(u**2)) / d)
            alpha = max(eps2, np.sqrt(np.mean(x[k] ** 2))) * rho
            new[k] = x[k] - alpha * u_hat
        x = new
        out.append(x)
    return out


def test_matches_the_paper_in_float64(trajectories):
    """w (6, 4) and k (2, 5, 4) are factored (the row/column form of V̂ = R Cᵀ / 1ᵀR with sums,
    optax's with means); the vector b keeps its full second moment."""
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        opt = adafactor(learning_rate=0.05, min_dim_size_to_factor=4)
        ours = jax.jit(lambda p: trajectories.on_loss(opt, gx.apply_updates, p, _loss,
                                                      steps=21))(params)

        def grad(x):
            return {k: np.asarray(v) for k, v in jax.grad(_loss)(
                {k: jnp.asarray(v) for k, v in x.items()}).items()}

        expected = numpy_adafactor(grad, {k: np.asarray(v) for k, v in params.items()}, 20,
                                   rho=0.05, min_dim=4)
    for t in range(20):
        for k in params:
            np.testing.assert_allclose(ours[k][t + 1], expected[t][k], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{k}, step {t}")


def test_factored_state_is_rows_plus_columns():
    """For a 256×512 matrix: 256 + 512 second-moment numbers instead of Adam's 2 × 131072."""
    params = {"w": jnp.zeros((256, 512)), "b": jnp.zeros(512)}
    state = scale_by_factored_rms().init(params)
    assert isinstance(state, FactoredState)
    assert state.v_row["w"].shape == (256,) and state.v_col["w"].shape == (512,)
    assert state.v["w"].shape == (1,) and state.v["b"].shape == (512,)
    ours = sum(x.size for x in jax.tree.leaves(state)) - 1  # minus the step count
    adam = sum(x.size for x in jax.tree.leaves(gx.scale_by_adam().init(params))) - 1
    assert ours == 256 + 512 + 1 + 1 + 1 + 512  # w: rows, cols, placeholder; b: 2 + full
    assert adam == 2 * (256 * 512 + 512)
    assert adam / ours > 200


def test_bfloat16_params_keep_float32_statistics():
    params = {"w": jnp.ones((4, 6), jnp.bfloat16)}
    t = scale_by_factored_rms(min_dim_size_to_factor=2)
    state = t.init(params)
    assert state.v_row["w"].dtype == jnp.float32
    u, state = t.update(jax.tree.map(lambda p: p * 1e-3, params), state, params)
    assert u["w"].dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(u["w"].astype(jnp.float32))))


# -- convention="torch": torch.optim.Adafactor's direction ---------------------------------------

def _torch_direction_np(seq, c, eps1):
    """torch.optim.Adafactor's `update` (before α and the clipping) for a sequence of gradients
    of one leaf, written out in numpy (float64)."""
    shape = seq[0].shape
    factored = len(shape) > 1
    r = np.zeros(shape[:-1] + (1,)) if factored else None
    col = np.zeros(shape[:-2] + (1,) + shape[-1:]) if factored else None
    v = None if factored else np.zeros(shape)
    out = []
    for t, g in enumerate(seq, start=1):
        w = t ** -c  # 1 - β̂_t, torch's lerp weight
        if factored:
            r = r + w * ((g * g).mean(-1, keepdims=True) - r)
            col = col + w * ((g * g).mean(-2, keepdims=True) - col)
            est = (r @ col) / np.maximum(r.mean(-2, keepdims=True), eps1)
        else:
            v = v + w * (g * g - v)
            est = v
        out.append(g / np.sqrt(np.maximum(est, eps1 * eps1)))
    return out


@pytest.mark.parametrize("shape", [(4, 5, 2), (6,), (3, 1)])
def test_torch_convention_is_torchs_update(shape):
    rng = np.random.RandomState(5)
    seq = rng.randn(12, *shape)
    seq[:, ..., 0] *= 1e-5  # small enough that torch's ε1 bound, not ε1 added to g², acts
    eps1 = 1e-4
    with jax.enable_x64(True):
        t = scale_by_factored_rms(decay_rate=0.6, epsilon=eps1, min_dim_size_to_factor=0,
                                  convention="torch")
        state = t.init(jnp.zeros(shape))
        got = []
        for g in seq:
            u, state = t.update(jnp.asarray(g), state)
            got.append(np.asarray(u))
    np.testing.assert_allclose(got, _torch_direction_np(seq, 0.6, eps1), rtol=1e-12)
    if shape == (4, 5, 2):
        # optax's convention factors the two largest axes (4 and 5), not the last two
        with jax.enable_x64(True):
            o = scale_by_factored_rms(decay_rate=0.6, epsilon=eps1, min_dim_size_to_factor=0)
            u, _ = o.update(jnp.asarray(seq[0]), o.init(jnp.zeros(shape)))
        assert not np.allclose(np.asarray(u), got[0], rtol=1e-3)


def test_torch_convention_default_eps_is_the_dtype_epsilon():
    g = jnp.array([[1e-30, 1.0], [2.0, 3.0]], jnp.float32)
    t = scale_by_factored_rms(epsilon=None, min_dim_size_to_factor=0, convention="torch")
    u, _ = t.update(g, t.init(g))
    eps = float(jnp.finfo(jnp.float32).eps)
    assert np.isfinite(np.asarray(u)).all() and abs(float(u[0, 0])) <= 1e-30 / eps * 1.01
    with pytest.raises(ValueError, match="epsilon=None"):
        scale_by_factored_rms(epsilon=None)
