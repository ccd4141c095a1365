"""snapshot, monitor and measure_with_ema against optax's namesakes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

pytestmark = pytest.mark.usefixtures("x64")


def _max_abs(tree):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(tree)]))


def test_measurements_match_optax(mixed_params, noisy_gradients):
    params = mixed_params("float64")
    grads = noisy_gradients(params)
    ours = gx.chain(gx.snapshot("norm", gx.global_norm), gx.clip_by_global_norm(1.0),
                    gx.monitor({"max": _max_abs, "ema": gx.measure_with_ema(gx.global_norm, 0.9),
                                "raw": gx.measure_with_ema(_max_abs, 0.8, False)}),
                    gx.sgd(0.1))
    theirs = optax.chain(optax.snapshot("norm", optax.global_norm),
                         optax.clip_by_global_norm(1.0),
                         optax.monitor({"max": _max_abs,
                                        "ema": optax.measure_with_ema(optax.global_norm, 0.9),
                                        "raw": optax.measure_with_ema(_max_abs, 0.8, False)}),
                         optax.sgd(0.1))

    @jax.jit
    def run_ours(p):
        def body(carry, t):   # the state keeps its structure: a lax.scan carry holds it
            p, s = carry
            u, s = ours.update(grads(p, t), s, p)
            return (gx.apply_updates(p, u), s), (s[0].measurement["norm"],
                                                 s[2].measurements)
        return jax.lax.scan(body, (p, ours.init(p)), jnp.arange(8))[1]

    norms, measured = run_ours(params)
    p, s = params, theirs.init(params)
    for t in range(8):
        u, s = theirs.update(grads(p, t), s, p)
        p = optax.apply_updates(p, u)
        np.testing.assert_allclose(norms[t], s[0].measurement["norm"], rtol=1e-12)
        for name in ("max", "ema", "raw"):
            np.testing.assert_allclose(measured[name][t], s[2].measurements[name], rtol=1e-12,
                                       err_msg=name)
    # measured before the clip (above 1) and after it (the clipped norm, 1, at every step)
    assert float(norms[-1]) > 1.0
    assert float(measured["ema"][-1]) == pytest.approx(1.0, rel=1e-12)


def test_monitor_state_has_its_structure_from_init(mixed_params):
    params = mixed_params("float64")
    opt = gx.monitor({"max": _max_abs})
    state = opt.init(params)
    updates, new_state = opt.update(params, state, params)
    assert jax.tree.structure(state) == jax.tree.structure(new_state)
    assert float(state.measurements["max"]) == 0.0
    assert updates is params
    with pytest.raises(TypeError, match="monitor: measures must be a non-empty mapping"):
        gx.monitor([])
