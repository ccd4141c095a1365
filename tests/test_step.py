"""gradxform.step: update_and_apply and make_step give exactly update + apply_updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform.step import make_step, update_and_apply

OPTIMIZERS = {
    "sgd_momentum": lambda: gx.sgd(1e-2, 0.9),
    "adam": lambda: gx.adam(1e-2),
    "adamw": lambda: gx.adamw(1e-2, weight_decay=1e-2),
    "lion": lambda: gx.lion(1e-3, weight_decay=1e-2),
    "adam_clip": lambda: gx.chain(gx.clip_by_global_norm(0.5), gx.adam(1e-2)),
}


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w": jax.random.normal(k1, (33, 17)),
        "b": jax.random.normal(k2, (17,)),
        "s": jnp.asarray(0.5, jnp.float32),
        "half": jnp.linspace(-1, 1, 12, dtype=jnp.bfloat16),
    }


def _grads(step):
    return jax.tree.map(
        lambda p: (jax.random.normal(jax.random.key(step), p.shape) * (1 + step)).astype(p.dtype),
        _params(),
    )


@jax.jit
def _reference_step(opt, grads, state, params):
    """The training step as users write it: update, then apply_updates, in one jit."""
    updates, state = opt.update(grads, state, params)
    return gx.apply_updates(params, updates), state


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))


@pytest.mark.parametrize("donate", [True, False])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_make_step_is_bit_identical_to_update_then_apply(name, donate):
    opt = OPTIMIZERS[name]()
    step = make_step(opt, donate=donate)
    p_ref, s_ref = _params(), opt.init(_params())
    p, s = _params(), opt.init(_params())
    for i in range(4):
        p_ref, s_ref = _reference_step(opt, _grads(i), s_ref, p_ref)
        p, s = step(_grads(i), s, p)
        _assert_identical(p, p_ref)
        _assert_identical(s, s_ref)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_make_step_agrees_with_eager_update_and_apply(name):
    # Eagerly, Python forms 1 - β in double precision and nothing is fused, so the two agree to
    # float32 rounding rather than bit for bit.
    opt = OPTIMIZERS[name]()
    step = make_step(opt)
    p_eager, s_eager = _params(), opt.init(_params())
    p, s = _params(), opt.init(_params())
    for i in range(4):
        u, s_eager = opt.update(_grads(i), s_eager, p_eager)
        p_eager = gx.apply_updates(p_eager, u)
        p, s = step(_grads(i), s, p)
    for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(p_eager)):
        tol = 1e-2 if x.dtype == jnp.bfloat16 else 1e-5
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                   rtol=tol, atol=tol)


def test_update_and_apply_is_update_then_apply():
    opt = gx.adamw(1e-2)
    params, state = _params(), opt.init(_params())
    new_params, new_state = jax.jit(update_and_apply)(opt, _grads(0), state, params)
    ref_params, ref_state = _reference_step(opt, _grads(0), state, params)
    _assert_identical(new_params, ref_params)
    _assert_identical(new_state, ref_state)


def test_make_step_donates_params_and_state_by_default():
    opt = gx.adam(1e-2)
    params, state = _params(), opt.init(_params())
    make_step(opt)(_grads(0), state, params)
    assert all(x.is_deleted() for x in jax.tree.leaves(params))
    assert all(x.is_deleted() for x in jax.tree.leaves(state))
    grads = _grads(1)
    params, state = _params(), opt.init(_params())
    make_step(opt, donate=False)(grads, state, params)
    assert not any(x.is_deleted() for x in jax.tree.leaves((params, state, grads)))


def test_new_hyperparameter_values_reuse_the_compiled_step():
    from gradxform import step as step_module

    params = {"w": jnp.ones((5, 3))}
    grads = {"w": jnp.full((5, 3), 0.1)}
    results = []
    before = None
    for lr in (1e-2, 3e-2, 1e-1):
        opt = gx.adamw(lr, weight_decay=1e-3)
        new_params, _ = make_step(opt, donate=False)(grads, opt.init(params), params)
        results.append(float(new_params["w"][0, 0]))
        if before is None:
            before = step_module._plain_step._cache_size()
    assert step_module._plain_step._cache_size() == before
    assert len(set(results)) == 3  # each learning rate was used


def test_make_step_passes_extra_args():
    @gx.pytree_dataclass
    class scale_by_value(gx.Transformation):
        factor: float = gx.hyperparameter(1.0)

        def init(self, params):
            return gx.EmptyState()

        def update(self, updates, state, params=None, *, value=None, **extra_args):
            return jax.tree.map(lambda g: g * value * self.factor, updates), state

    opt = scale_by_value(2.0)
    params = {"w": jnp.ones(3)}
    new_params, _ = make_step(opt, donate=False)({"w": jnp.ones(3)}, opt.init(params), params,
                                                 value=jnp.float32(0.25))
    np.testing.assert_array_equal(new_params["w"], np.full(3, 1.5, np.float32))


def test_make_step_refuses_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="make_step: optimizer must be a transformation"):
        make_step(lambda g: g)
