"""make_step and update_and_apply: the semantics of the one-call step.

Where XLA runs the step (small leaves, fused=False) it is bit for bit update + apply_updates in
one jit; where the vector kernel runs it, the same to float32 rounding (its numbers are checked
against numpy and XLA in test_vector_kernel.py).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform._src.fast.step import make_step, update_and_apply

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


@pytest.mark.parametrize("name", ["adam", "adamw", "adam_clip", "sgd_momentum"])
def test_donated_step_updates_in_place_without_copies(name):
    # Each donated buffer must be paired with the output it becomes; a wrong pairing makes
    # XLA copy every param and moment on every step. (Lion's XLA program copies its moment:
    # two fusions read the old one and one overwrites it; its kernel does not, see below.)
    from gradxform._src.fast import step as step_module

    opt = OPTIMIZERS[name]()
    params = {"w": jnp.ones((64, 32)), "b": jnp.ones((32,))}
    leaves, treedef = jax.tree.flatten(opt)
    hlo = step_module._compiled(treedef, False, True).lower(
        leaves, params, opt.init(params), params, {}
    ).compile().as_text()
    array_copies = re.findall(r"= \w+\[\d[^\]]*\]\S* copy\(", hlo)  # scalar copies are free
    assert not array_copies
    n_arrays = sum(jnp.ndim(x) > 0 for x in jax.tree.leaves((params, opt.init(params))))
    assert hlo.split("input_output_alias={")[1].split("}, entry")[0].count("may-alias") >= n_arrays


def test_new_hyperparameter_values_reuse_the_compiled_step():
    from gradxform._src.fast import step as step_module

    params = {"w": jnp.ones((5, 3))}
    grads = {"w": jnp.full((5, 3), 0.1)}
    results, sizes = [], []
    for lr in (1e-2, 3e-2, 1e-1):
        opt = gx.adamw(lr, weight_decay=1e-3)
        new_params, _ = make_step(opt, donate=False)(grads, opt.init(params), params)
        results.append(float(new_params["w"][0, 0]))
        compiled = step_module._compiled(jax.tree.structure(opt), True, False)
        sizes.append((step_module._compiled.cache_info().currsize, compiled._cache_size()))
    assert sizes[0] == sizes[1] == sizes[2]  # one recipe, one compilation
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


# -- with the vector kernel (XLA:CPU, float32 leaves of 2**14 elements and more) -----------------


def _f32_params():
    # One leaf large enough to be split across threads, one just over the kernel's threshold,
    # and leaves small enough to stay with XLA.
    k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
    return {"big": jax.random.normal(k1, (300_007,)), "mid": jax.random.normal(k4, (130, 127)),
            "w": jax.random.normal(k2, (17, 5)), "s": jax.random.normal(k3, ())}


def _f32_grads(step):
    return jax.tree.map(lambda p: jax.random.normal(jax.random.key(100 + step), p.shape) * 1e-2,
                        _f32_params())


def _kernel_runs(opt) -> bool:
    """Whether make_step runs the kernel for `opt`: built, and the chain ends in a run of
    elementwise transformations."""
    from gradxform._src.fast import fusion, kernel

    members = [t for t, _ in fusion.flat_members(opt, opt.init({"w": jnp.zeros(3)}))]
    runs = fusion.runs(members)
    return kernel.available() and bool(runs) and runs[-1][1] == len(members)


def _assert_close(a, b):
    """To float32 rounding: within 2 ulp of each leaf's largest value (see test_vector_kernel)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
        assert np.max(np.abs(x - y), initial=0) <= 2 * np.spacing(np.max(np.abs(y), initial=0))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fused_step_agrees_with_update_then_apply(name):
    opt = OPTIMIZERS[name]()
    fused, plain = make_step(opt), make_step(opt, fused=False)
    p_ref, s_ref = _f32_params(), opt.init(_f32_params())
    p1, s1 = _f32_params(), opt.init(_f32_params())
    p2, s2 = _f32_params(), opt.init(_f32_params())
    for i in range(3):
        p_ref, s_ref = _reference_step(opt, _f32_grads(i), s_ref, p_ref)
        p1, s1 = fused(_f32_grads(i), s1, p1)
        p2, s2 = plain(_f32_grads(i), s2, p2)
        _assert_identical(p2, p_ref)  # the XLA program: bit for bit
        _assert_identical(s2, s_ref)
        _assert_close(p1, p_ref)
        _assert_close(s1, s_ref)
        for small in ("w", "s"):  # below the kernel's threshold: XLA's numbers
            _assert_identical(p1[small], p_ref[small])
        p1, s1 = jax.tree.map(jnp.copy, (p_ref, s_ref))  # the next step from the same inputs


@pytest.mark.parametrize("fused", [True, False])
def test_make_step_inside_a_jitted_training_step(fused):
    # The kernel is chosen while the step is traced, from shapes alone, so a step called from
    # the user's own jit (params are tracers there) is fused too.
    opt = gx.adamw(1e-2, weight_decay=1e-2)
    step = make_step(opt, fused=fused)
    train_step = jax.jit(lambda grads, state, params: step(grads, state, params))
    p_ref, s_ref = _f32_params(), opt.init(_f32_params())
    p, s = _f32_params(), opt.init(_f32_params())
    for i in range(3):
        p_ref, s_ref = _reference_step(opt, _f32_grads(i), s_ref, p_ref)
        p, s = train_step(_f32_grads(i), s, p)
        _assert_close(p, p_ref)
        _assert_close(s, s_ref)
        p, s = jax.tree.map(jnp.copy, (p_ref, s_ref))
    hlo = train_step.lower(_f32_grads(0), s, p).compile().as_text()
    calls = hlo.count('custom_call_target="gradxform_vector_step"')
    assert calls == (1 if fused and _kernel_runs(opt) else 0)  # 2 leaves large enough, one call


def test_fused_step_on_many_leaves(monkeypatch):
    # More leaves than one kernel call takes, of sizes that do not divide evenly. The calls
    # take 4 leaves here (32 in use), so that 10 large leaves make three calls and the test
    # compiles a small program.
    from gradxform._src.fast import kernel

    monkeypatch.setattr(kernel, "LEAVES_PER_CALL", 4)
    gx.clear_caches()
    params = {f"layer{i}": {"w": jnp.linspace(-1, 1, 701 * i + 16_384), "b": jnp.full((i % 5,),
                                                                                     0.1)}
              for i in range(10)}
    opt = gx.adamw(1e-2, weight_decay=1e-2)
    step = make_step(opt)
    p_ref, s_ref = params, opt.init(params)
    p, s = jax.tree.map(jnp.copy, params), opt.init(params)
    for i in range(2):
        grads = jax.tree.map(lambda x, k=i + 3.0: jnp.sin(x * k), params)
        p_ref, s_ref = _reference_step(opt, grads, s_ref, p_ref)
        p, s = step(grads, s, p)
        _assert_close(p, p_ref)
        _assert_close(s, s_ref)
        p, s = jax.tree.map(jnp.copy, (p_ref, s_ref))
    text = jax.jit(lambda g, s, p: step(g, s, p)).lower(grads, s, p).as_text()
    assert text.count("@gradxform_vector_step(") == (3 if _kernel_runs(opt) else 0)


def test_fused_step_falls_back_for_16_bit_params():
    opt = gx.adamw(1e-2)
    params = {"w": jnp.ones((400, 300), jnp.bfloat16)}
    grads = {"w": jnp.full((400, 300), 0.5, jnp.bfloat16)}
    p1, s1 = make_step(opt, donate=False)(grads, opt.init(params), params)
    p2, s2 = _reference_step(opt, grads, opt.init(params), params)
    _assert_identical(p1, p2)
    _assert_identical(s1, s2)


def test_clear_caches_forgets_compiled_steps():
    from gradxform._src.fast import kernel
    from gradxform._src.fast import step as step_module

    opt = gx.adam(1e-2)
    make_step(opt, donate=False)(_f32_grads(0), opt.init(_f32_params()), _f32_params())
    assert step_module._compiled.cache_info().currsize >= 1
    gx.clear_caches()
    assert step_module._compiled.cache_info().currsize == 0
    assert len(kernel.programs_cache) == 0
    assert step_module._compiled.cache_info().maxsize == kernel.programs_cache.maxsize == 256
