"""Checkpoint and resume with orbax: bit-identical resumption, the optimizer saved as data, and
clear errors when the checkpoint does not fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform._src.interop import checkpoint

STEPS = 8


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (3, 2)), "b": jax.random.normal(k2, (2,)), "frozen": None}


def _batch(i):
    return jax.random.normal(jax.random.key(100 + i), (8, 3))


@jax.jit
def _step(opt, params, state, x):
    def loss(p):
        return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return gx.apply_updates(params, updates), state


def _train(opt, params, state, start, stop):
    for i in range(start, stop):
        params, state = _step(opt, params, state, _batch(i))
    return params, state


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


RECIPES = {
    "adam": lambda: gx.adam(0.05),
    # The learning rate warms up for 3 steps and then decays: the resumed run must continue it.
    "scheduled_adamw": lambda: gx.adamw(gx.warmup_cosine_decay_schedule(0.0, 0.05, 3, STEPS),
                                        weight_decay=gx.piecewise_constant_schedule(
                                            0.1, {5: 0.5})),
    # k = 3 micro-batches per step; the checkpoint falls inside an accumulation (step 4 = 3 + 1).
    "MultiSteps": lambda: gx.MultiSteps(gx.adam(0.05), 3),
    # sync every 3 steps; the checkpoint falls between two syncs.
    "lookahead": lambda: gx.lookahead(gx.adam(0.05), 3, 0.5),
    "apply_if_finite": lambda: gx.apply_if_finite(gx.adamw(0.05, weight_decay=0.1), 2),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_resume_at_step_k_is_bit_identical(name, tmp_path):
    make = RECIPES[name]
    opt = make()
    params = _params()
    whole = _train(opt, params, opt.init(params), 0, STEPS)

    k = STEPS // 2
    params_k, state_k = _train(opt, params, opt.init(params), 0, k)
    checkpoint.save(tmp_path / "ckpt", {"params": params_k, "opt_state": state_k,
                                        "optimizer": opt})

    # A new run: the recipe rebuilt from code, nothing carried over but the checkpoint.
    fresh = make()
    like = {"params": jax.eval_shape(lambda: params_k), "opt_state":
            jax.eval_shape(fresh.init, params), "optimizer": fresh}
    restored = checkpoint.restore(tmp_path / "ckpt", like)
    assert restored["optimizer"] == opt
    assert type(restored["opt_state"]) is type(state_k)
    resumed = _train(restored["optimizer"], restored["params"], restored["opt_state"], k, STEPS)
    _assert_bitwise_equal(resumed, whole)
    moved = float(jnp.max(jnp.abs(whole[0]["w"] - params["w"])))
    assert moved > 0.05


def test_the_optimizer_is_saved_as_data_and_rebuilt_with_its_values(tmp_path):
    # The run changed its learning rate (a new optimizer, the same structure): the checkpoint
    # keeps the value in use, at full precision, and the recipe of the new run receives it.
    saved = gx.adamw(0.00123, weight_decay=3e-4)
    checkpoint.save(tmp_path / "ckpt", {"optimizer": saved})
    restored = checkpoint.restore(tmp_path / "ckpt", {"optimizer": gx.adamw(1e-3)})["optimizer"]
    assert restored == saved
    assert repr(restored) == repr(saved)
    lr = gx.hyperparams(restored, restored.init(_params()))["scale_by_learning_rate"]
    assert lr["learning_rate"] == 0.00123 and type(lr["learning_rate"]) is float


def test_restore_keeps_python_numbers_and_array_hyperparameters_apart(tmp_path):
    saved = gx.chain(gx.scale_by_adam(b1=0.9), gx.scale(jnp.asarray(-0.5, jnp.float32)))
    checkpoint.save(tmp_path / "ckpt", saved)
    restored = checkpoint.restore(tmp_path / "ckpt", saved)
    b1, step_size = restored.transforms[0].b1, restored.transforms[1].step_size
    assert type(b1) is float and b1 == 0.9
    assert isinstance(step_size, jax.Array) and step_size.dtype == jnp.float32


def test_restoring_into_another_optimizer_names_the_mismatch(tmp_path):
    params = _params()
    opt = gx.adam(0.05)
    checkpoint.save(tmp_path / "ckpt", {"opt_state": opt.init(params), "optimizer": opt})
    other = gx.sgd(0.05, 0.9)
    like = {"opt_state": jax.eval_shape(other.init, params), "optimizer": other}
    with pytest.raises(ValueError) as info:
        checkpoint.restore(tmp_path / "ckpt", like)
    message = str(info.value)
    assert "'opt_state/0/trace/b' is in `like` but not in the checkpoint" in message
    assert "Saved with:\n  optimizer: chain(scale_by_adam(b1=0.9" in message
    assert "Restoring into:\n  optimizer: chain(trace(decay=0.9" in message


def test_restoring_for_params_of_another_shape_names_the_leaf(tmp_path):
    opt = gx.adam(0.05)
    checkpoint.save(tmp_path / "ckpt", {"opt_state": opt.init(_params())})
    bigger = dict(_params(), w=jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"'opt_state/0/mu/w' has shape \(3, 2\) in the "
                                         r"checkpoint but \(4, 2\) in `like`"):
        checkpoint.restore(tmp_path / "ckpt", {"opt_state": jax.eval_shape(opt.init, bigger)})


def test_restoring_moments_of_another_dtype_names_the_leaf(tmp_path):
    opt = gx.adam(0.05)
    checkpoint.save(tmp_path / "ckpt", {"opt_state": opt.init(_params())})
    bf16 = gx.adam(0.05, mu_dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match=r"'opt_state/0/mu/b' has dtype float32 in the "
                                         r"checkpoint but bfloat16 in `like`"):
        checkpoint.restore(tmp_path / "ckpt", {"opt_state": jax.eval_shape(bf16.init, _params())})


def test_a_checkpoint_with_an_extra_entry_is_refused(tmp_path):
    opt = gx.adam(0.05)
    checkpoint.save(tmp_path / "ckpt", {"opt_state": opt.init(_params()), "step": 3})
    with pytest.raises(ValueError, match="'step' is in the checkpoint but not in `like`"):
        checkpoint.restore(tmp_path / "ckpt", {"opt_state": jax.eval_shape(opt.init, _params())})


def test_restoring_into_other_static_options_is_refused_unless_intended(tmp_path):
    """nesterov=False saved, nesterov=True in the code: the resumed run would be another
    optimizer without a word."""
    params = _params()
    mask = lambda p: {k: k == "w" for k in p}  # noqa: E731  (a function: compared by name)
    saved = gx.adamw(0.05, mask=mask)
    checkpoint.save(tmp_path / "ckpt", {"opt_state": saved.init(params), "optimizer": saved})

    def like(opt):
        return {"opt_state": jax.eval_shape(opt.init, params), "optimizer": opt}

    changed = gx.adamw(0.05, mask=mask, nesterov=True)
    with pytest.raises(ValueError, match=r"option nesterov of scale_by_adam \(at "
                                         r"'optimizer/transforms\[0\]\.nesterov'\) is False in "
                                         r"the checkpoint but True in `like`; pass "
                                         r"allow_changed_options=True if the change is intended"):
        checkpoint.restore(tmp_path / "ckpt", like(changed))
    restored = checkpoint.restore(tmp_path / "ckpt", like(changed), allow_changed_options=True)
    assert restored["optimizer"] == changed
    # the same recipe built again (a new function object for the mask) restores as before
    same = gx.adamw(0.05, mask=lambda p: {k: k == "w" for k in p})
    assert checkpoint.restore(tmp_path / "ckpt", like(same))["optimizer"] == same
