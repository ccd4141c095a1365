"""The transformation protocol: transformations are data, states are named, errors are clear."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

PARAMS = {"layer1": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, "head": jnp.ones(2)}


def _grads(params, scale=1.0):
    return jax.tree.map(lambda p: scale * jnp.cos(p + 1.0), params)


# -- a transformation is data -----------------------------------------------------------------


def test_repr_reads_as_the_recipe():
    assert repr(gx.adamw(1e-3)) == (
        "chain(scale_by_adam(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0), "
        "add_decayed_weights(weight_decay=0.0001), "
        "scale_by_learning_rate(learning_rate=0.001))"
    )
    assert repr(gx.scale_by_adam(nesterov=True)) == (
        "scale_by_adam(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0, nesterov=True)"
    )
    assert repr(gx.sgd(0.1, 0.9)) == (
        "chain(trace(decay=0.9, dampening=0.0), scale_by_learning_rate(learning_rate=0.1))"
    )


def test_a_nested_recipe_is_indented_and_evaluates_to_an_equal_optimizer():
    schedule = gx.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)
    opt = gx.partition(
        {"body": gx.adamw(1e-4, weight_decay=1e-2),
         "head": gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(schedule, weight_decay=1e-2)),
         "frozen": gx.set_to_zero()},
        {"embed/**": "frozen", "encoder/**": "body", "head/*": "head"})
    assert repr(opt) == """partition(
    transforms={
        'body': chain(
            scale_by_adam(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0),
            add_decayed_weights(weight_decay=0.01),
            scale_by_learning_rate(learning_rate=0.0001),
        ),
        'head': chain(
            clip_by_global_norm(max_norm=1.0),
            chain(
                scale_by_adam(b1=0.9, b2=0.999, eps=1e-08, eps_root=0.0),
                add_decayed_weights(weight_decay=0.01),
                scale_by_learning_rate(learning_rate=warmup_cosine_decay_schedule(\
init_value=0.0, peak_value=0.001, warmup_steps=10, decay_steps=100, end_value=0.0, exponent=1.0)),
            ),
        ),
        'frozen': set_to_zero(),
    },
    param_labels={'embed/**': 'frozen', 'encoder/**': 'body', 'head/*': 'head'},
)"""
    names = {name: getattr(gx, name) for name in gx.__all__}
    for recipe in [opt, gx.adamw(1e-3), gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-3)),
                   gx.MultiSteps(gx.lookahead(gx.adamw(1e-3, weight_decay=1e-2), 5, 0.5), 4),
                   gx.named_chain(("clip", gx.clip_by_global_norm(1.0)), ("adam", gx.adam(0.1)))]:
        assert eval(repr(recipe), names) == recipe, repr(recipe)
    # a chain of primitives alone keeps its one-line recipe, however long
    assert "\n" not in repr(gx.adamw(1e-3, nesterov=True))


def test_same_recipe_compares_equal_and_hashes_equal():
    assert gx.adamw(1e-3) == gx.adamw(1e-3)
    assert hash(gx.adamw(1e-3)) == hash(gx.adamw(1e-3))
    assert gx.adamw(1e-3) != gx.adamw(2e-3)
    assert gx.adamw(1e-3) != gx.adam(1e-3)
    assert gx.scale(jnp.array([1.0, 2.0])) == gx.scale(jnp.array([1.0, 2.0]))
    assert gx.scale(jnp.array([1.0, 2.0])) != gx.scale(jnp.array([1.0, 3.0]))
    assert gx.scale_by_adam(nesterov=True) != gx.scale_by_adam()
    assert len({gx.adam(1e-3), gx.adam(1e-3), gx.sgd(1e-3)}) == 2


def test_transformations_are_frozen():
    opt = gx.scale_by_adam()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.b1 = 0.5


def test_numeric_hyperparameters_are_leaves_and_options_are_static():
    leaves, treedef = jax.tree_util.tree_flatten(gx.adamw(1e-3, mu_dtype=jnp.bfloat16))
    assert leaves == [0.9, 0.999, 1e-8, 0.0, 1e-4, 1e-3]
    rebuilt = jax.tree_util.tree_unflatten(treedef, [x * 0 + 0.5 for x in leaves])
    assert rebuilt.transforms[0].mu_dtype == jnp.bfloat16
    assert rebuilt.transforms[2].learning_rate == 0.5
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(gx.adam(1.0))]
    assert paths[-1] == ".transforms[1].learning_rate"


def _train(opt, params, steps=5):
    @jax.jit
    def step(opt, params, state):
        updates, state = opt.update(_grads(params), state, params)
        return gx.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(steps):
        params, state = step(opt, params, state)
    return step, params, state


def test_changing_a_numeric_hyperparameter_does_not_recompile():
    @jax.jit
    def step(opt, params, state):
        updates, state = opt.update(_grads(params), state, params)
        return gx.apply_updates(params, updates), state

    params, state = PARAMS, gx.adamw(1e-3).init(PARAMS)
    for lr, wd in [(1e-3, 1e-4), (2e-3, 1e-4), (5e-4, 0.1), (1.0, 0.0)]:
        params, state = step(gx.adamw(lr, weight_decay=wd), params, state)
    assert step._cache_size() == 1
    # ...and the moments carried on: the step count is 4, not reset.
    assert int(state[0].count) == 4
    # A structural option is static: changing it compiles a new step.
    step(gx.adamw(1e-3, nesterov=True), params, state)
    assert step._cache_size() == 2


def test_vmap_over_learning_rates_is_a_sweep():
    lrs = jnp.array([1e-3, 1e-2, 1e-1])

    def run(lr):
        opt = gx.adam(lr)
        params, state = PARAMS, opt.init(PARAMS)
        def body(carry, _):
            p, s = carry
            u, s = opt.update(_grads(p), s, p)
            return (gx.apply_updates(p, u), s), None
        (params, _), _ = jax.lax.scan(body, (params, state), None, length=10)
        return params

    swept = jax.jit(jax.vmap(run))(lrs)
    for i, lr in enumerate([1e-3, 1e-2, 1e-1]):
        single = jax.jit(run)(lr)
        for a, b in zip(jax.tree.leaves(swept), jax.tree.leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-7)
    # different learning rates gave different results
    assert not np.allclose(swept["head"][0], swept["head"][2])


def test_vmap_over_an_optimizer_passed_as_data():
    """in_axes built from the optimizer itself: 0 for the learning rate leaf, None elsewhere."""
    opt = gx.sgd(jnp.array([0.1, 0.2]), 0.9)
    axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, opt)
    state = gx.sgd(0.1, 0.9).init(PARAMS)

    def one_step(opt):
        updates, _ = opt.update(_grads(PARAMS), state, PARAMS)
        return updates

    out = jax.vmap(one_step, in_axes=(axes,))(opt)
    np.testing.assert_allclose(out["head"][1], 2 * out["head"][0], rtol=1e-6)


@pytest.mark.parametrize("param", [jnp.ones((5, 3)), jnp.ones(())], ids=["matrix", "scalar"])
def test_an_array_hyperparameter_outside_vmap_is_refused(param):
    """Without vmap, lr of shape (3,) would train each column of a (5, 3) param at its own rate,
    or turn a scalar param's update into shape (3,): refused, naming the field and the fix."""
    opt = gx.adam(jnp.array([1e-3, 1e-2, 1e-1]))
    state = opt.init(param)
    message = (r"scale_by_learning_rate: learning_rate must be a scalar at each step, got an "
               r"array of shape \(3,\)\. An array of values is a sweep: vmap over the optimizer")
    with pytest.raises(ValueError, match=message):
        opt.update(param, state, param)
    with pytest.raises(ValueError, match=message):
        jax.jit(opt.update)(param, state, param)


def test_a_schedule_of_arrays_and_a_constant_array_are_refused_too():
    schedule = gx.linear_schedule(jnp.array([1.0, 2.0]), 0.0, 10)
    opt = gx.chain(gx.scale_by_adam(), gx.scale_by_learning_rate(schedule))
    with pytest.raises(ValueError, match=r"learning_rate must be a scalar .* shape \(2,\)"):
        opt.update(PARAMS, opt.init(PARAMS), PARAMS)
    # a transformation without a step count checks its values as given
    no_count = gx.scale_by_shape(consistent_rms=jnp.array([0.2, 0.3]))
    with pytest.raises(ValueError, match=r"scale_by_shape: consistent_rms must be a scalar"):
        no_count.update(PARAMS, no_count.init(PARAMS), PARAMS)


# -- state -------------------------------------------------------------------------------------


def test_state_has_named_fields():
    state = gx.adamw(1e-3).init(PARAMS)
    assert state[0]._fields == ("count", "mu", "nu")
    assert state[0].count.dtype == jnp.int32
    assert state[2]._fields == ("count",)


@pytest.mark.parametrize("make", [gx.adam, gx.sgd, gx.lion, gx.rmsprop])
def test_state_structure_does_not_depend_on_how_a_hyperparameter_is_given(make):
    s_float = make(1e-3).init(PARAMS)
    s_array = make(jnp.asarray(1e-3)).init(PARAMS)
    s_numpy = make(np.float32(1e-3)).init(PARAMS)
    s_callable = make(lambda count: 1e-3 * 0.5 ** count).init(PARAMS)
    ref = jax.tree_util.tree_structure(s_float)
    for s in (s_array, s_numpy, s_callable):
        assert jax.tree_util.tree_structure(s) == ref


def test_step_counter_saturates_instead_of_overflowing():
    big = jnp.asarray(np.iinfo(np.int32).max - 1, jnp.int32)
    assert int(gx.safe_increment(big)) == np.iinfo(np.int32).max
    assert int(gx.safe_increment(gx.safe_increment(big))) == np.iinfo(np.int32).max
    opt = gx.scale_by_adam()
    state = opt.init(PARAMS)._replace(count=big)
    for _ in range(3):
        updates, state = opt.update(_grads(PARAMS), state)
    assert int(state.count) == np.iinfo(np.int32).max
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("build, message", [
    (lambda: gx.adam(-1.0), "scale_by_learning_rate: learning_rate must be >= 0, got -1.0"),
    (lambda: gx.scale_by_adam(b1=1.5), "scale_by_adam: b1 must be in [0, 1), got 1.5"),
    (lambda: gx.scale_by_adam(b2=-0.1), "scale_by_adam: b2 must be in [0, 1), got -0.1"),
    (lambda: gx.scale_by_adam(eps=float("nan")), "scale_by_adam: eps must be finite, got nan"),
    (lambda: gx.sgd(0.1, momentum=1.5), "trace: decay must be in [0, 1], got 1.5"),
    (lambda: gx.adamw(1e-3, weight_decay=-1e-2),
     "add_decayed_weights: weight_decay must be >= 0, got -0.01"),
    (lambda: gx.rmsprop(0.1, decay=jnp.array([0.9, 1.2])), "scale_by_rms: decay must be in [0, 1)"),
    (lambda: gx.amsgrad(0.1, max_of="torch"),
     "scale_by_amsgrad: max_of must be 'debiased' or 'raw'"),
])
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert message in str(err.value)


def test_traced_hyperparameters_are_not_validated():
    """Under vmap/jit the values are tracers; construction must not touch them."""
    out = jax.jit(lambda lr: gx.adam(lr).init(PARAMS)[0].count)(0.1)
    assert int(out) == 0


def test_chain_refuses_non_transformations():
    with pytest.raises(TypeError, match="chain: argument 1 must be a transformation .*got 0.1"):
        gx.chain(gx.scale_by_adam(), 0.1)


def test_updates_params_mismatch_names_the_first_differing_path():
    opt = gx.adamw(1e-3)
    state = opt.init(PARAMS)
    grads = {"layer1": {"w": jnp.ones((3, 2)), "bias": jnp.zeros(2)}, "head": jnp.ones(2)}
    with pytest.raises(ValueError, match="updates has key 'layer1/bias' that params lacks"):
        opt.update(grads, state, PARAMS)


def test_shape_mismatch_names_the_leaf():
    opt = gx.adam(1e-3)
    state = opt.init(PARAMS)
    grads = {"layer1": {"w": jnp.ones((2, 3)), "b": jnp.zeros(2)}, "head": jnp.ones(2)}
    with pytest.raises(ValueError, match="leaf 'layer1/w' has shape"):
        opt.update(grads, state, PARAMS)


def test_state_from_other_params_is_caught_before_jax():
    opt = gx.adam(1e-3)
    state = opt.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match="state does not match the state that init gives"):
        opt.update(_grads(PARAMS), state, PARAMS)
    with pytest.raises(ValueError, match="state does not match"):
        jax.jit(opt.update)(_grads(PARAMS), state, PARAMS)


def test_integer_updates_are_refused_with_a_fix():
    opt = gx.sgd(0.1)
    params = {"w": jnp.ones(3), "step": jnp.zeros((), jnp.int32)}
    with pytest.raises(TypeError, match="updates leaf 'step' has dtype int32"):
        opt.update(params, opt.init(params), params)


def test_decayed_weights_without_params_says_what_to_pass():
    opt = gx.adamw(1e-3)
    with pytest.raises(ValueError, match="params are required"):
        opt.update(_grads(PARAMS), opt.init(PARAMS))


# -- chain, identity, apply_updates ------------------------------------------------------------


def test_chain_applies_in_order_and_keeps_states_in_order():
    opt = gx.chain(gx.scale(2.0), gx.add_decayed_weights(1.0), gx.scale(-0.5))
    g = _grads(PARAMS)
    updates, state = opt.update(g, opt.init(PARAMS), PARAMS)
    expected = jax.tree.map(lambda g, p: -0.5 * (2.0 * g + p), g, PARAMS)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert len(state) == 3


def test_identity_set_to_zero_and_empty_chain():
    g = _grads(PARAMS)
    for opt, expect in [(gx.identity(), g), (gx.chain(), g),
                        (gx.set_to_zero(), jax.tree.map(jnp.zeros_like, g))]:
        updates, _ = opt.update(g, opt.init(PARAMS), PARAMS)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(expect)):
            np.testing.assert_array_equal(a, b)


def test_apply_updates_keeps_param_dtype():
    params = {"w": jnp.ones(3, jnp.bfloat16), "v": jnp.ones(2, jnp.float32), "n": None}
    updates = {"w": jnp.full(3, 0.5, jnp.float32), "v": jnp.full(2, 0.25, jnp.bfloat16), "n": None}
    new = gx.apply_updates(params, updates)
    assert new["w"].dtype == jnp.bfloat16 and new["v"].dtype == jnp.float32 and new["n"] is None
    np.testing.assert_array_equal(new["w"], jnp.full(3, 1.5, jnp.bfloat16))
    np.testing.assert_array_equal(new["v"], jnp.full(2, 1.25))


def test_16_bit_params_get_float32_moments_by_default():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    state = gx.scale_by_adam().init(params)
    assert state.mu["w"].dtype == jnp.float32 and state.nu["w"].dtype == jnp.float32
    state = gx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16).init(params)
    assert state.mu["w"].dtype == jnp.bfloat16 and state.nu["w"].dtype == jnp.bfloat16


def test_hyperparams_reads_current_values():
    opt = gx.adamw(1e-3, weight_decay=0.1)
    state = opt.init(PARAMS)
    hp = gx.hyperparams(opt, state)
    assert hp["scale_by_learning_rate"] == {"learning_rate": 1e-3}
    assert hp["add_decayed_weights"] == {"weight_decay": 0.1}
    assert hp["scale_by_adam"]["b2"] == 0.999
    # a schedule written as a Python function is evaluated at the state's count
    opt = gx.adam(lambda count: 0.1 / (1 + count))
    _, _, state = _train(opt, PARAMS, steps=3)
    np.testing.assert_allclose(gx.hyperparams(opt, state)["scale_by_learning_rate"]
                               ["learning_rate"], 0.1 / 4)


def test_hyperparameters_read_by_init_accept_schedules_read_at_step_zero():
    params = {"w": jnp.ones(3)}
    for t, field in [(gx.scale_by_rms(initial_scale=lambda count: 0.5 + count), "nu"),
                     (gx.scale_by_stddev(initial_scale=lambda count: 0.5 + count), "nu"),
                     (gx.scale_by_rss(initial_accumulator_value=lambda count: 0.5 + count),
                      "sum_of_squares")]:
        np.testing.assert_array_equal(getattr(t.init(params), field)["w"], [0.5, 0.5, 0.5])
