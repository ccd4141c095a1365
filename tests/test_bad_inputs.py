"""Every row of the README's "Bad inputs" table: a clear error or a documented correct result."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform import tree_utils

INT32_MAX = np.iinfo(np.int32).max


def _params(dtype=jnp.float32):
    return {"w": jnp.array([[0.5, -1.0], [2.0, 0.25]], dtype), "b": jnp.array([0.1, -0.3], dtype)}


def _grads(dtype=jnp.float32):
    return {"w": jnp.array([[0.3, -0.2], [0.1, 0.4]], dtype), "b": jnp.array([-0.5, 0.2], dtype)}


# -- NaN and Inf gradients ------------------------------------------------------------------------


def test_nan_gradient_propagates_to_its_own_coordinate_only():
    opt = gx.adam(0.1)
    params = _params()
    grads = _grads()
    grads["w"] = grads["w"].at[0, 1].set(jnp.nan)
    grads["b"] = grads["b"].at[1].set(jnp.inf)
    updates, state = opt.update(grads, opt.init(params), params)
    # The default policy is to propagate: the bad coordinates show NaN in the update and the
    # moments, where a loss curve or a finiteness check sees them; the others are untouched.
    assert np.isnan(updates["w"][0, 1]) and np.isnan(state[0].mu["w"][0, 1])
    assert np.isnan(updates["b"][1])  # Adam: inf / sqrt(inf²) is NaN
    assert np.isinf(state[0].nu["b"][1])
    clean, _ = opt.update(_grads(), opt.init(params), params)
    finite = np.isfinite(np.asarray(updates["w"]))
    assert finite.sum() == 3
    np.testing.assert_array_equal(np.asarray(updates["w"])[finite],
                                  np.asarray(clean["w"])[finite])
    np.testing.assert_array_equal(updates["b"][0], clean["b"][0])


def test_zero_nans_policy_zeroes_nan_coordinates_and_flags_the_leaf():
    opt = gx.chain(gx.zero_nans(), gx.adam(0.1))
    params = _params()
    grads = _grads()
    grads["w"] = grads["w"].at[0, 1].set(jnp.nan)
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    zeroed = _grads()
    zeroed["w"] = zeroed["w"].at[0, 1].set(0.0)
    reference, _ = gx.adam(0.1).update(zeroed, gx.adam(0.1).init(params), params)
    np.testing.assert_allclose(updates["w"], reference["w"], rtol=1e-6)
    assert float(updates["w"][0, 1]) == 0.0
    assert bool(state[0].found_nan["w"]) and not bool(state[0].found_nan["b"])


def test_skip_step_policy_leaves_params_and_moments_untouched():
    opt = gx.apply_if_finite(gx.adam(0.1), 2)
    params = _params()
    step = jax.jit(opt.update)
    _, state = step(_grads(), opt.init(params), params)
    bad = dict(_grads(), b=jnp.array([jnp.nan, 1.0]))
    updates, skipped = step(bad, state, params)
    assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
    for before, after in zip(jax.tree.leaves(state.inner_state),
                             jax.tree.leaves(skipped.inner_state), strict=True):
        np.testing.assert_array_equal(before, after)
    assert int(skipped.notfinite_count) == 1 and int(skipped.total_notfinite) == 1
    # More than max_consecutive_errors in a row: the update goes through, and the run shows it.
    _, s = step(bad, skipped, params)
    updates, s = step(bad, s, params)
    assert int(s.notfinite_count) == 3
    assert np.isnan(np.asarray(updates["b"][0]))


def test_skip_micro_batch_policy_of_gradient_accumulation():
    opt = gx.MultiSteps(gx.sgd(1.0), 2, should_skip_update_fn=gx.skip_not_finite)
    params = _params()
    state = opt.init(params)
    _, state = opt.update(_grads(), state, params)
    _, state = opt.update(dict(_grads(), w=jnp.full((2, 2), jnp.inf)), state, params)
    assert int(state.mini_step) == 1  # the bad micro-batch did not count
    updates, state = opt.update(_grads(), state, params)
    # The mean of the two good micro-batches, as if the bad one had never come.
    np.testing.assert_allclose(updates["w"], -_grads()["w"], rtol=1e-6)


# -- tree-structure mismatches --------------------------------------------------------------------


def test_updates_with_a_key_params_lack_is_named():
    opt = gx.adam(0.1)
    params = _params()
    grads = dict(_grads(), extra=jnp.ones(2))
    with pytest.raises(ValueError, match="chain.update: updates has key 'extra' that params lacks"):
        opt.update(grads, opt.init(params), params)


def test_params_with_a_key_updates_lack_is_named():
    opt = gx.adam(0.1)
    params = dict(_params(), extra=jnp.ones(2))
    with pytest.raises(ValueError, match="params has key 'extra' that updates lacks"):
        opt.update(_grads(), opt.init(params), params)


def test_a_leaf_of_another_shape_is_named():
    opt = gx.adam(0.1)
    params = _params()
    grads = dict(_grads(), b=jnp.ones(3))
    with pytest.raises(ValueError, match=r"leaf 'b' has shape \(3,\) in updates but \(2,\)"):
        opt.update(grads, opt.init(params), params)


def test_state_of_another_optimizer_is_refused_naming_the_path():
    params = _params()
    state = gx.sgd(0.1, 0.9).init(params)
    with pytest.raises(ValueError, match="state does not match the state that init.*'0/mu/b'"):
        gx.adam(0.1).update(_grads(), state, params)


def test_state_for_params_of_another_shape_is_refused_naming_the_leaf():
    opt = gx.adam(0.1)
    params = _params()
    state = opt.init({"w": jnp.ones((2, 3)), "b": jnp.ones(2)})
    for update in (opt.update, jax.jit(opt.update)):
        with pytest.raises(ValueError, match=r"state leaf '0/mu/w' has shape \(2, 3\), init gives "
                                             r"\(2, 2\)"):
            update(_grads(), state, params)


def test_apply_updates_names_the_mismatch():
    with pytest.raises(ValueError, match="apply_updates: updates has key 'extra' that params"):
        gx.apply_updates(_params(), dict(_grads(), extra=jnp.ones(1)))
    with pytest.raises(ValueError, match=r"apply_updates: leaf 'b' has shape \(1,\) in updates"):
        gx.apply_updates(_params(), dict(_grads(), b=jnp.ones(1)))


# -- invalid hyperparameters ----------------------------------------------------------------------


@pytest.mark.parametrize("make, error, message", [
    (lambda: gx.adam(0.1, b1=1.5), ValueError, r"scale_by_adam: b1 must be in \[0, 1\), got 1.5"),
    (lambda: gx.adam(0.1, b2=-0.1), ValueError, r"scale_by_adam: b2 must be in \[0, 1\), got -0.1"),
    (lambda: gx.adam(-1e-3), ValueError,
     "scale_by_learning_rate: learning_rate must be >= 0, got -0.001"),
    (lambda: gx.adam(float("nan")), ValueError,
     "scale_by_learning_rate: learning_rate must be finite, got nan"),
    (lambda: gx.sgd(jnp.array(jnp.inf)), ValueError, "learning_rate must be finite"),
    (lambda: gx.adam(0.1, eps=-1.0), ValueError, "scale_by_adam: eps must be >= 0, got -1.0"),
    (lambda: gx.adam("1e-3"), TypeError,
     "scale_by_learning_rate: learning_rate must be a number, an array or a schedule, got '1e-3'"),
    (lambda: gx.adam(None), TypeError,
     "scale_by_learning_rate: learning_rate must be a number, an array or a schedule, got None"),
    (lambda: gx.trace(None), TypeError, "trace: decay must be a number"),
])
def test_invalid_hyperparameters_are_refused_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("make, option", [
    (lambda d: gx.adam(0.1, mu_dtype=d), "scale_by_adam: mu_dtype"),
    (lambda d: gx.scale_by_adam(nu_dtype=d), "scale_by_adam: nu_dtype"),
    (lambda d: gx.ema(0.9, accumulator_dtype=d), "ema: accumulator_dtype"),
    (lambda d: gx.MultiSteps(gx.sgd(0.1), 2, accumulator_dtype=d), "MultiSteps: accumulator_dtype"),
])
def test_an_unknown_dtype_option_is_refused_at_construction_naming_it(make, option):
    # numpy's own "data type 'bf16' not understood" came from init, naming no option
    for bad in ["bf16", "float17", jnp.int32]:
        with pytest.raises(ValueError, match=rf"{option} must be None or a floating-point dtype "
                                             rf"\(jnp.float32, jnp.bfloat16, 'bfloat16'.*got "):
            make(bad)
    make("bfloat16").init(_params())  # names numpy understands are fine


@pytest.mark.parametrize("flag", [True, False, np.bool_(True), jnp.array(True)])
def test_a_bool_hyperparameter_is_refused(flag):
    # True would have been a learning rate of 1.0
    with pytest.raises(TypeError, match=r"scale_by_learning_rate: learning_rate must be a number, "
                                        r"an array or a schedule, got .*True|False.* \(a bool"):
        gx.sgd(flag)


@pytest.mark.parametrize("make, message", [
    (lambda: gx.sgd(gx.linear_schedule(1e-3, -1e-3, 10)),
     r"scale_by_learning_rate: learning_rate must be >= 0, got linear_schedule\(init_value=0.001, "
     r"end_value=-0.001, .*\), whose final value is -0.001"),
    (lambda: gx.adam(1e-3, b1=gx.linear_schedule(0.9, 1.0, 10)),
     r"scale_by_adam: b1 must be in \[0, 1\), got linear_schedule.*whose final value is 1.0"),
    (lambda: gx.adamw(gx.warmup_cosine_decay_schedule(-1e-4, 1e-3, 10, 100)),
     r"learning_rate must be >= 0, got warmup_cosine.*whose value at step 0 is -0.0001"),
    (lambda: gx.sgd(gx.join_schedules([gx.constant_schedule(0.1),
                                       gx.cosine_decay_schedule(0.1, 10, alpha=-1.0)], [5])),
     r"learning_rate must be >= 0, got join_schedules.*whose final value of schedules\[1\] is "
     r"-0.1"),
    (lambda: gx.sgd(gx.step_lr_schedule(-0.1, 10)),   # end points found by evaluating it
     r"learning_rate must be >= 0, got step_lr_schedule.*whose value at step 0 is -0.1"),
])
def test_a_schedule_whose_end_points_leave_the_range_is_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_schedules_inside_the_range_and_traced_schedules_are_accepted():
    gx.sgd(gx.linear_schedule(1e-3, 0.0, 10))
    gx.adam(1e-3, b1=gx.linear_schedule(0.5, 0.9, 10))
    gx.sgd(gx.join_schedules([lambda count: -1.0, gx.constant_schedule(0.1)], [3]))  # not called
    state = gx.sgd(0.1).init(_params())
    read = jax.jit(lambda p: gx.hyperparams(gx.sgd(gx.linear_schedule(p, -p, 10)), state))
    assert np.isfinite(read(jnp.float32(0.1))["scale_by_learning_rate"]["learning_rate"])


def test_traced_hyperparameters_are_not_checked_at_construction():
    # Inside jit the value is unknown when the optimizer is built: no check, no error.
    build = jax.jit(lambda lr: gx.adam(lr).update(_grads(), gx.adam(0.1).init(_params()))[0])
    updates = build(jnp.float32(0.1))
    assert np.all(np.isfinite(np.asarray(updates["w"])))


# -- integer and bool params ----------------------------------------------------------------------


def test_integer_updates_are_refused():
    opt = gx.sgd(0.1)
    params = {"w": jnp.ones(3), "n": jnp.zeros((), jnp.int32)}
    with pytest.raises(TypeError, match="updates leaf 'n' has dtype int32.*eqx.is_inexact_array"):
        opt.update(params, opt.init(params), params)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_and_bool_params_are_refused_by_update_and_apply_updates(dtype):
    params = {"w": jnp.ones(3), "n": jnp.zeros(2, dtype)}
    name = jnp.dtype(dtype).name
    opt = gx.adam(0.1)
    state = opt.init(params)
    grads = {"w": jnp.ones(3), "n": jnp.full(2, 0.4)}
    with pytest.raises(TypeError, match=f"update: params leaf 'n' has dtype {name}"):
        opt.update(grads, state, params)
    # θ + u cast back to int32 or bool would silently round every step away.
    with pytest.raises(TypeError, match=f"apply_updates: params leaf 'n' has dtype {name}"):
        gx.apply_updates(params, grads)


def test_init_of_integer_params_gives_float_buffers():
    # Without params, update cannot see their dtype; the moments must still not truncate.
    opt = gx.adam(0.1)
    state = opt.init({"n": jnp.arange(3)})
    assert state[0].mu["n"].dtype == jnp.float32
    updates, _ = opt.update({"n": jnp.array([0.5, -0.5, 0.25])}, state)
    np.testing.assert_allclose(updates["n"], [-0.1, 0.1, -0.1], rtol=1e-6)


def test_float0_gradients_of_integer_inputs_are_refused():
    params = {"w": jnp.ones(3)}
    grads = {"w": np.zeros(3, jax.dtypes.float0)}
    with pytest.raises(TypeError, match="updates leaf 'w' has dtype float0"):
        gx.sgd(0.1).update(grads, gx.sgd(0.1).init(params), params)


# -- complex params -------------------------------------------------------------------------------


def _complex_trajectory(opt, apply, params, steps=20):
    def loss(p):
        # A real loss of complex params: |A p - y|², with a gradient that mixes both parts.
        a = jnp.array([[1.0 + 0.5j, -0.3j], [0.2, 1.0 - 0.2j]], p.dtype)
        y = jnp.array([1.0 - 1.0j, 0.5j], p.dtype)
        return jnp.sum(jnp.abs(a @ p - y) ** 2)

    def body(carry, _):
        p, s = carry
        g = jnp.conj(jax.grad(loss)(p))  # optax's convention for complex params
        u, s = opt.update(g, s, p)
        return (apply(p, u), s), p

    (_, state), ps = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return ps, state


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.complex128])
def test_adam_on_complex_params_equals_optax(dtype):
    with jax.enable_x64(dtype == jnp.complex128):
        params = jnp.array([0.3 - 0.1j, -0.2 + 0.4j], dtype)
        ours, state = jax.jit(
            lambda p: _complex_trajectory(gx.adam(0.05), gx.apply_updates, p))(params)
        theirs, _ = jax.jit(
            lambda p: _complex_trajectory(optax.adam(0.05), optax.apply_updates, p))(params)
        assert ours.dtype == dtype
        # The second moment holds |g|², real.
        assert state[0].nu.dtype == jnp.finfo(dtype).dtype
        assert float(jnp.max(jnp.abs(ours[-1] - ours[0]))) > 0.1
        rtol, atol = (2e-5, 2e-6) if dtype == jnp.complex64 else (1e-12, 1e-13)
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)


# -- 16-bit params --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_params_keep_their_dtype_with_float32_moments(dtype):
    opt = gx.adamw(1e-2)
    params = _params(dtype)
    state = opt.init(params)
    assert state[0].mu["w"].dtype == state[0].nu["w"].dtype == jnp.float32
    updates, state = opt.update(_grads(dtype), state, params)
    assert updates["w"].dtype == dtype
    new = gx.apply_updates(params, updates)
    assert new["w"].dtype == new["b"].dtype == dtype
    # float32 updates on 16-bit params still give 16-bit params.
    assert gx.apply_updates(params, _grads(jnp.float32))["w"].dtype == dtype


def test_16_bit_moments_when_asked_for():
    opt = gx.adam(1e-2, mu_dtype=jnp.bfloat16)
    state = opt.init(_params(jnp.bfloat16))
    assert state[0].mu["w"].dtype == jnp.bfloat16
    assert state[0].nu["w"].dtype == jnp.float32


def test_bf16_moments_would_stall_where_float32_ones_move():
    # Why float32 is the default: (1 - β2) g² underflows bf16's precision next to v.
    g = jnp.full((1,), 1e-3, jnp.bfloat16)
    v = jnp.full((1,), 1.0, jnp.bfloat16)
    assert (0.999 * v + 0.001 * g * g)[0] == v[0]


# -- None and empty leaves, empty trees -----------------------------------------------------------


def test_none_and_empty_leaves_pass_through():
    opt = gx.adamw(0.1)
    params = {"w": jnp.ones(2), "frozen": None, "empty": jnp.zeros((0, 3))}
    state = opt.init(params)
    grads = {"w": jnp.ones(2), "frozen": None, "empty": jnp.zeros((0, 3))}
    updates, state = jax.jit(opt.update)(grads, state, params)
    assert updates["frozen"] is None and state[0].mu["frozen"] is None
    assert updates["empty"].shape == (0, 3)
    new = gx.apply_updates(params, updates)
    assert new["frozen"] is None and new["empty"].shape == (0, 3)


@pytest.mark.parametrize("empty", [{}, (), []])
def test_an_empty_tree_gives_empty_updates(empty):
    opt = gx.adam(0.1)
    updates, state = opt.update(empty, opt.init(empty), empty)
    assert updates == empty
    assert int(state[0].count) == 1
    assert gx.apply_updates(empty, updates) == empty


def test_a_whole_tree_of_none_as_params_means_no_params():
    opt = gx.adam(0.1)
    updates, _ = opt.update(None, opt.init(None), None)
    assert updates is None
    # A transformation that needs params says so rather than decaying nothing.
    with pytest.raises(ValueError, match="add_decayed_weights.update: params are required"):
        gx.adamw(0.1).update(None, gx.adamw(0.1).init(None), None)


# -- the step counter -----------------------------------------------------------------------------


def test_step_counter_saturates_at_int32_max():
    opt = gx.adam(0.1)
    params = _params()
    state = opt.init(params)
    near = jnp.asarray(INT32_MAX - 1, jnp.int32)
    state = (state[0]._replace(count=near), state[1]._replace(count=near))
    step = jax.jit(opt.update)
    m = v = np.zeros(2)
    g = np.asarray(_grads()["b"], np.float64)
    for _ in range(3):
        updates, state = step(_grads(), state, params)
        assert int(state[0].count) == int(state[1].count) == INT32_MAX
        # No wrap-around to a negative count: the bias corrections 1 - β^t stay 1, and the
        # step is Adam's with uncorrected moments.
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        np.testing.assert_allclose(updates["b"], -0.1 * m / (np.sqrt(v) + 1e-8), rtol=1e-5)


# -- donated buffers ------------------------------------------------------------------------------


def test_a_donated_state_used_again_raises_jax_error():
    opt = gx.adam(0.1)
    params = _params()
    step = jax.jit(opt.update, donate_argnums=1)
    old = opt.init(params)
    _, new = step(_grads(), old, params)
    assert old[0].mu["w"].is_deleted()
    with pytest.raises((ValueError, RuntimeError), match="deleted or donated|been deleted"):
        step(_grads(), old, params)
    with pytest.raises((ValueError, RuntimeError), match="deleted or donated|been deleted"):
        opt.update(_grads(), old, params)
    # The state it returned is the one to carry on with.
    updates, _ = step(_grads(), new, params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))


# -- tree_set and tree_get on optimizer states -------------------------------------------------


def test_tree_set_refuses_what_does_not_fit_and_tree_get_lists_matches():
    state = gx.adamw(0.1).init(_params())
    mu = tree_utils.tree_get(state, "mu")
    with pytest.raises(TypeError, match=r"tree_set: 'mu' at '0/ScaleByAdamState.mu/b' holds "
                                        r"float32, the new value float16; cast it"):
        tree_utils.tree_set(state, mu=tree_utils.tree_cast(mu, jnp.float16))
    with pytest.raises(ValueError, match="has shape"):
        tree_utils.tree_set(state, mu={**mu, "b": jnp.zeros(3)})
    with pytest.raises(KeyError, match="the names in the tree are"):
        tree_utils.tree_set(state, moment=mu)
    zeroed = tree_utils.tree_set(state, count=0)
    assert all(c.dtype == jnp.int32 for _, c in tree_utils.tree_get_all_with_path(zeroed, "count"))
    with pytest.raises(TypeError, match="cannot hold 2.5"):
        tree_utils.tree_set(state, count=2.5)
    with pytest.raises(KeyError, match=r"'0/ScaleByAdamState.count', '1/CountState.count'"):
        tree_utils.tree_get(state, "count")
