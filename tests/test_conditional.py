"""conditionally_transform and conditionally_mask against optax's namesakes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

pytestmark = pytest.mark.usefixtures("x64")


def test_same_trajectories_as_optax(mixed_params, noisy_gradients, trajectories):
    params = mixed_params("float64")
    grads = noisy_gradients(params)
    every_third = lambda step: step % 3 == 0  # noqa: E731
    after_two = lambda step, loss: jnp.logical_and(step >= 2, loss > 0)  # noqa: E731
    pairs = [
        (gx.conditionally_transform(gx.adam(1e-2), every_third),
         optax.conditionally_transform(optax.adam(1e-2), every_third)),
        (gx.conditionally_mask(gx.adam(1e-2), every_third),
         optax.conditionally_mask(optax.adam(1e-2), every_third)),
        (gx.chain(gx.conditionally_transform(gx.trace(0.9), every_third), gx.scale(-0.1)),
         optax.chain(optax.conditionally_transform(optax.trace(0.9), every_third),
                     optax.scale(-0.1))),
    ]
    outs = trajectories.run([trajectories.stepper(o, params, grads) for pair in pairs
                             for o in pair], steps=30)
    for i in range(len(pairs)):
        trajectories.assert_close(outs[2 * i][0], outs[2 * i + 1][0], "float64", f"pair {i}")
    # steps 1 and 2 were masked and held the params still; step 3 moved them again
    w = np.asarray(outs[2][0]["dense"]["w"])
    np.testing.assert_array_equal(w[0], w[1])
    np.testing.assert_array_equal(w[1], w[2])
    assert not np.allclose(w[2], w[3])
    # extra arguments reach the condition when asked to, and the inner transformation always
    ours = gx.conditionally_mask(gx.sgd(0.1), after_two, forward_extra_args=True)
    theirs = optax.conditionally_mask(optax.sgd(0.1), after_two, forward_extra_args=True)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for t in range(4):
        g = grads(params, t)
        u, s_ours = ours.update(g, s_ours, params, loss=1.0)
        v, s_theirs = theirs.update(g, s_theirs, params, loss=1.0)
        for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
            np.testing.assert_array_equal(x, y)
    assert int(s_ours.step) == 4 and float(jnp.abs(u["dense"]["w"]).max()) > 0


def test_the_condition_must_be_a_scalar(mixed_params):
    params = mixed_params("float64")
    opt = gx.conditionally_transform(gx.sgd(0.1), lambda step: jnp.ones(2, bool))
    with pytest.raises(ValueError, match="should_transform_fn must return a scalar"):
        opt.update(params, opt.init(params), params)
