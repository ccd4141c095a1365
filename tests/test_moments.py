"""The primitives written as per-element equations, and the one EMA step they share.

Each elementwise primitive is checked to be elementwise in fact (a vector gives, bit for bit,
what its entries give as separate scalar leaves), trace's first step and the weight-decay mask
against numpy, `moments.ema_step` against its equation in both operand orders, and the precision
in which a float16 gradient meets a bfloat16 moment.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform._src.primitives.moments import ema_step

ELEMENTWISE = {
    "scale": lambda: gx.scale(-0.3),
    "scale_by_learning_rate": lambda: gx.scale_by_learning_rate(0.1),
    "add_decayed_weights": lambda: gx.add_decayed_weights(0.1),
    "trace": lambda: gx.trace(0.9, dampening=0.1),
    "trace_nesterov": lambda: gx.trace(0.9, nesterov=True),
    "ema": lambda: gx.ema(0.9),
    "scale_by_lion": lambda: gx.scale_by_lion(),
    "scale_by_sign": lambda: gx.scale_by_sign(),
    "scale_by_rss": lambda: gx.scale_by_rss(),
    "scale_by_rms": lambda: gx.scale_by_rms(bias_correction=True, eps_in_sqrt=False),
    "scale_by_stddev": lambda: gx.scale_by_stddev(),
    "scale_by_adam": lambda: gx.scale_by_adam(),
    "scale_by_amsgrad": lambda: gx.scale_by_amsgrad(max_of="raw"),
    "scale_by_adamax": lambda: gx.scale_by_adamax(),
    "clip": lambda: gx.clip(0.2),
    "scale_by_lion_refined": lambda: gx.scale_by_lion(mode="refined"),
    "scale_by_optimistic_gradient": lambda: gx.scale_by_optimistic_gradient(0.5, 2.0),
    "keep_params_nonnegative": lambda: gx.keep_params_nonnegative(),
}


def _run(opt, params, grads):
    state = opt.init(params)
    step = jax.jit(opt.update)
    outs = []
    for g in grads:
        u, state = step(g, state, params)
        outs.append(u)
    return outs, state


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_primitive_updates_each_entry_on_its_own(name):
    # The fast path composes `element` per entry; that is valid only if entry i of the update
    # depends on entry i alone. A vector leaf and its entries as separate scalar leaves must give
    # the same numbers, up to the last bit: XLA fuses a multiply into an add (one rounding fewer)
    # in a vector loop where it may not in scalar code. Reading another entry would differ by far
    # more.
    opt = ELEMENTWISE[name]()
    assert isinstance(opt, gx.ElementwiseTransformation)
    rng = np.random.default_rng(1)
    p = rng.normal(size=7).astype(np.float32)
    gs = [rng.normal(size=7).astype(np.float32) for _ in range(4)]
    vec_out, vec_state = _run(opt, {"w": jnp.asarray(p)}, [{"w": jnp.asarray(g)} for g in gs])
    split = lambda x: {f"w{i}": jnp.asarray(x[i]) for i in range(7)}  # noqa: E731
    sca_out, sca_state = _run(opt, split(p), [split(g) for g in gs])
    for v, s in zip(vec_out, sca_out, strict=True):
        np.testing.assert_allclose(np.asarray(v["w"]),
                                   np.array([np.asarray(s[f"w{i}"]) for i in range(7)]),
                                   rtol=2.5e-7, atol=1e-30)


def test_trace_starts_from_the_first_gradient_then_follows_the_heavy_ball():
    mu, d = 0.9, 0.25
    rng = np.random.default_rng(2)
    gs = [rng.normal(size=5) for _ in range(3)]
    with jax.enable_x64(True):
        outs, _ = _run(gx.trace(mu, dampening=d), {"w": jnp.zeros(5, jnp.float64)},
                       [{"w": jnp.asarray(g)} for g in gs])
    v = gs[0]  # v_1 = g_1, torch's initialisation of the buffer (no dampening on it)
    np.testing.assert_allclose(np.asarray(outs[0]["w"]), v, rtol=1e-15)
    for g, u in zip(gs[1:], outs[1:], strict=True):
        v = mu * v + (1 - d) * g
        np.testing.assert_allclose(np.asarray(u["w"]), v, rtol=1e-14)


def test_weight_decay_mask_leaves_masked_leaves_untouched():
    params = {"w": jnp.asarray([1.0, -2.0, 3.0], jnp.float32),
              "b": jnp.asarray([np.inf, np.nan, 4.0], jnp.float32)}
    grads = {"w": jnp.asarray([0.5, -0.0, 0.25], jnp.float32),
             "b": jnp.asarray([-0.0, 1.0, 2.0], jnp.float32)}
    opt = gx.add_decayed_weights(0.5, mask={"w": True, "b": False})
    u, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    # the masked leaf is g itself, bit for bit (-0.0 stays -0.0; inf and nan in θ are not read)
    assert np.asarray(u["b"]).tobytes() == np.asarray(grads["b"]).tobytes()
    np.testing.assert_array_equal(np.asarray(u["w"]), np.float32([1.0, -1.0, 1.75]))


@pytest.mark.parametrize("decay_first", [False, True])
def test_ema_step_is_the_average_equation(decay_first):
    rng = np.random.default_rng(3)
    m, g = rng.normal(size=100), rng.normal(size=100)
    beta = 0.37
    with jax.enable_x64(True):
        got = ema_step(jnp.asarray(m), jnp.asarray(g), beta, decay_first=decay_first)
    np.testing.assert_allclose(np.asarray(got), beta * m + (1 - beta) * g, rtol=1e-14, atol=1e-15)


def test_float16_gradients_update_a_bfloat16_moment_in_bfloat16():
    # Of two 16-bit precisions the moment's wins: the float16 gradient is rounded to bfloat16
    # first, so it gives the buffer that the same gradient given in bfloat16 gives.
    rng = np.random.default_rng(4)
    gs = [rng.normal(size=64).astype(np.float32) for _ in range(3)]
    for opt in (gx.trace(0.9, accumulator_dtype=jnp.bfloat16),
                gx.ema(0.9, accumulator_dtype=jnp.bfloat16),
                gx.scale_by_lion(mu_dtype=jnp.bfloat16),
                gx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16)):
        states = []
        for dtype in (jnp.float16, jnp.bfloat16):
            grads = [{"w": jnp.asarray(g, jnp.float16).astype(dtype)} for g in gs]
            states.append(_run(opt, {"w": jnp.zeros(64, dtype)}, grads)[1])
        for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1]), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
