"""reduce_on_plateau against optax.contrib's (same arguments, same numbers) and, in its torch
form (`reduce_lr_on_plateau`), against torch.optim.lr_scheduler.ReduceLROnPlateau on recorded
metric sequences (tests/reference/make_torch_schedule_fixtures.py writes
torch_plateau_fixtures.json)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

PLATEAU = json.loads(
    (Path(__file__).parent / "reference" / "torch_plateau_fixtures.json").read_text())["cases"]
PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}


def _scales(opt, values):
    """The factor each update applies (updates of all-ones gradients), and the states."""
    grads = jax.tree.map(jnp.ones_like, PARAMS)

    @jax.jit
    def step(state, v):
        u, state = opt.update(grads, state, PARAMS, value=v)
        return state, (u["w"][0, 0], state)

    _, (scales, states) = jax.lax.scan(step, opt.init(PARAMS),
                                       jnp.asarray(values, jnp.float32))
    return np.asarray(scales), states


@pytest.mark.parametrize("case", sorted(PLATEAU))
def test_reproduces_torch_reduce_lr_on_plateau(case):
    c = PLATEAU[case]
    lr = c["base_lr"]
    scales, _ = _scales(gx.reduce_lr_on_plateau(lr, **c["kwargs"]), c["values"])
    want = np.asarray(c["lr"])
    assert len(set(c["lr"])) > 2, f"{case}: torch cut the learning rate at most once"
    np.testing.assert_allclose(lr * scales, want, rtol=1e-6)


def test_the_optax_convention_leaves_torch():
    c = PLATEAU["min_rel_cooldown_min_lr"]
    lr, k = c["base_lr"], c["kwargs"]
    optax_form = gx.reduce_on_plateau(k["factor"], k["patience"], cooldown=k["cooldown"],
                                      min_scale=k["min_lr"] / lr)
    scales, _ = _scales(optax_form, c["values"])
    assert not np.allclose(lr * scales, c["lr"], rtol=1e-3)  # one step fewer to a plateau


OPTAX_ARGS = [
    dict(),
    dict(factor=0.5, patience=3, rtol=0.0, atol=0.01, cooldown=2, min_scale=0.05),
    dict(factor=0.3, patience=2, rtol=1e-3, atol=1e-3, accumulation_size=3),
]


@pytest.mark.parametrize("args", OPTAX_ARGS)
def test_same_numbers_as_optax(args):
    values = PLATEAU["min_rel_cooldown_min_lr"]["values"]
    ours, our_states = _scales(gx.reduce_on_plateau(**args), values)
    theirs, their_states = _scales(optax.contrib.reduce_on_plateau(**args), values)
    assert len(set(theirs.tolist())) > 2, "optax cut the scale at most once: says little"
    np.testing.assert_array_equal(ours, theirs)
    for field in gx.ReduceLROnPlateauState._fields:
        np.testing.assert_array_equal(getattr(our_states, field),
                                      getattr(their_states, field), err_msg=field)


def test_in_a_chain_the_value_reaches_it():
    opt = gx.chain(gx.sgd(0.1), gx.reduce_on_plateau(0.5, 1))
    state = opt.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    for v in [1.0, 1.0, 1.0]:
        updates, state = opt.update(grads, state, PARAMS, value=v)
    np.testing.assert_allclose(updates["b"], -0.1 * 0.25)
    with pytest.raises(ValueError, match="value="):
        opt.update(grads, state, PARAMS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="factor must be in"):
        gx.reduce_on_plateau(1.5)
    with pytest.raises(ValueError, match="both 0"):
        gx.reduce_on_plateau(rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="threshold_mode"):
        gx.reduce_lr_on_plateau(0.1, threshold_mode="relative")
