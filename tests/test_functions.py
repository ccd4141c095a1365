"""stateless and stateless_with_tree_map against optax's namesakes."""

import jax
import jax.numpy as jnp
import optax
import pytest

import gradxform as gx

pytestmark = pytest.mark.usefixtures("x64")


def _centre(updates, params):
    return jax.tree.map(lambda g, p: g - jnp.mean(g) + 0.01 * p, updates, params)


def _clip_leaf(g, p):
    return jnp.clip(g, -0.5, 0.5) if p is None else jnp.clip(g, -0.5, 0.5) + 0.1 * p


def test_same_trajectories_as_optax(mixed_params, noisy_gradients, trajectories):
    params = mixed_params("float64")
    grads = noisy_gradients(params)
    pairs = [
        (gx.chain(gx.stateless(_centre), gx.sgd(0.1, 0.9)),
         optax.chain(optax.stateless(_centre), optax.sgd(0.1, 0.9))),
        (gx.chain(gx.stateless_with_tree_map(_clip_leaf), gx.adam(1e-2)),
         optax.chain(optax.stateless_with_tree_map(_clip_leaf), optax.adam(1e-2))),
    ]
    outs = trajectories.run([trajectories.stepper(o, params, grads) for pair in pairs
                             for o in pair], steps=30)
    for i in range(len(pairs)):
        trajectories.assert_close(outs[2 * i][0], outs[2 * i + 1][0], "float64", f"pair {i}")
    without_params = gx.stateless_with_tree_map(_clip_leaf)
    reference = optax.stateless_with_tree_map(_clip_leaf)
    g = grads(params, 0)
    ours = without_params.update(g, without_params.init(params))[0]
    theirs = reference.update(g, reference.init(params))[0]
    trajectories.assert_close(ours, theirs, "float64")
    assert gx.stateless(_centre) == gx.stateless(_centre)
