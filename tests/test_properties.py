"""Properties over random trees, dtypes and hyperparameters (hypothesis).

chain() is the identity; chain is associative; scale(1) is the identity; jit changes nothing;
updates and state keep their structure, shapes and dtypes; and the state's structure does not
depend on whether a hyperparameter is a Python float or an array.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradxform as gx

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]

# -- random trees ---------------------------------------------------------------------------------

_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
_array_specs = st.tuples(_shapes, st.sampled_from(DTYPES), st.integers(0, 2**16))
_leaves = st.one_of(_array_specs, st.none())
_keys = st.sampled_from(["w", "b", "layer", "scale", "emb"])
_specs = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.dictionaries(_keys, inner, max_size=3),
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=2).map(tuple),
    ),
    max_leaves=6,
)


def _realise(spec, salt=0):
    """Arrays for a tree spec: (shape, dtype, stream) leaves become deterministic normal arrays,
    drawn from the numpy generator numbered `stream + salt`."""
    def leaf(s):
        if s is None:
            return None
        shape, dtype, stream = s
        values = np.random.RandomState(stream + salt).standard_normal(shape)
        return jnp.asarray(values, jnp.float32).astype(dtype)

    return jax.tree.map(leaf, spec, is_leaf=lambda s: s is None or (
        isinstance(s, tuple) and len(s) == 3 and isinstance(s[1], type)))


# (params, grads). A whole tree of None is left out: `update(g, s, None)` means "no params".
trees = _specs.filter(lambda spec: spec is not None).map(
    lambda spec: (_realise(spec), _realise(spec, salt=1)))

# -- random transformations -----------------------------------------------------------------------

_decay = st.floats(0.0, 0.99)
_eps = st.floats(1e-8, 1e-3)
_rate = st.floats(1e-3, 1.0)

# Factors stay away from the subnormal range, where a 16-bit rounding is a jump to zero.
_factor = st.one_of(st.floats(0.05, 2.0), st.floats(-2.0, -0.05), st.just(0.0))

transformations = st.one_of(
    _factor.map(gx.scale),
    _rate.map(gx.scale_by_learning_rate),
    st.tuples(_decay, st.booleans()).map(lambda a: gx.trace(a[0], nesterov=a[1])),
    _decay.map(gx.ema),
    st.tuples(_decay, _decay, _eps).map(lambda a: gx.scale_by_adam(a[0], b2=a[1], eps=a[2])),
    st.tuples(_decay, _eps).map(lambda a: gx.scale_by_rms(a[0], eps=a[1])),
    st.just(gx.scale_by_sign()),
    st.floats(0.0, 0.1).map(gx.add_decayed_weights),
    st.floats(0.1, 10.0).map(gx.clip_by_global_norm),
    st.just(gx.zero_nans()),
)


def _steps(opt, params, grads, n=2, update=None):
    """Updates and state after n steps with the same gradients."""
    update = update or opt.update
    state = opt.init(params)
    for _ in range(n):
        updates, state = update(grads, state, params)
    return updates, state


def _signature(tree):
    return jax.tree.structure(tree), [(jnp.shape(x), jnp.result_type(x))
                                      for x in jax.tree.leaves(tree)]


def _assert_bitwise(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert jnp.result_type(x) == jnp.result_type(y)
        assert np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))


def _assert_close_to_rounding(a, b, eps):
    """Equal up to a few roundings of relative size `eps`."""
    assert _signature(a) == _signature(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = float(np.max(np.abs(y), initial=1.0))
        np.testing.assert_allclose(x, y, rtol=8 * eps, atol=8 * eps * scale)


# -- properties -----------------------------------------------------------------------------------


@SETTINGS
@given(trees)
def test_empty_chain_is_identity(tree):
    params, grads = tree
    updates, state = _steps(gx.chain(), params, grads)
    assert state == ()
    _assert_bitwise(updates, grads)


@SETTINGS
@given(trees, st.floats(-4.0, 4.0).filter(lambda x: x != 0.0))
def test_scale_by_one_is_identity(tree, power):
    params, grads = tree
    updates, _ = _steps(gx.scale(1.0), params, grads)
    _assert_bitwise(updates, grads)
    # scale(1) anywhere in a chain changes nothing either.
    t = gx.scale(power)
    _assert_bitwise(_steps(gx.chain(gx.scale(1.0), t, gx.scale(1.0)), params, grads)[0],
                    _steps(t, params, grads)[0])


@SETTINGS
@given(trees, transformations, transformations, transformations)
def test_chain_is_associative(tree, a, b, c):
    params, grads = tree
    left, left_state = _steps(gx.chain(a, gx.chain(b, c)), params, grads)
    right, right_state = _steps(gx.chain(gx.chain(a, b), c), params, grads)
    flat, flat_state = _steps(gx.chain(a, b, c), params, grads)
    _assert_bitwise(left, right)
    _assert_bitwise(left, flat)
    # The same states, nested differently: (sa, (sb, sc)), ((sa, sb), sc), (sa, sb, sc).
    _assert_bitwise(list((left_state[0], *left_state[1])), list(flat_state))
    _assert_bitwise(list((*right_state[0], right_state[1])), list(flat_state))


@SETTINGS
@given(trees, transformations, transformations)
def test_jit_equals_no_jit(tree, a, b):
    params, grads = tree
    opt = gx.chain(a, b)
    eager = _steps(opt, params, grads)
    jitted = _steps(opt, params, grads, update=jax.jit(opt.update))
    # Compiled, a 16-bit intermediate that is widened right after (a bf16 update entering a
    # float32 moment) may skip its rounding to 16 bits; eagerly every op rounds. So the two
    # agree to a few roundings of the narrowest input precision, in every leaf (a global norm
    # mixes the leaves).
    eps = max((float(jnp.finfo(jnp.result_type(g)).eps) for g in jax.tree.leaves(grads)),
              default=0.0)
    _assert_close_to_rounding(jitted, eager, eps)


@SETTINGS
@given(trees, transformations, transformations)
def test_updates_and_state_keep_structure_shapes_and_dtypes(tree, a, b):
    params, grads = tree
    opt = gx.chain(a, b)
    state0 = opt.init(params)
    updates, state = opt.update(grads, state0, params)
    assert _signature(updates) == _signature(grads)
    assert _signature(state) == _signature(state0)
    updates, state = opt.update(updates, state, params)
    assert _signature(updates) == _signature(grads)
    assert _signature(state) == _signature(state0)
    assert _signature(gx.apply_updates(params, updates)) == _signature(params)


@SETTINGS
@given(trees, _decay, _decay, _rate)
def test_state_structure_does_not_depend_on_how_hyperparameters_are_given(tree, b1, b2, lr):
    params, grads = tree
    as_floats = gx.chain(gx.scale_by_adam(b1, b2=b2), gx.scale_by_learning_rate(lr))
    as_arrays = gx.chain(gx.scale_by_adam(jnp.float32(b1), b2=jnp.float32(b2)),
                         gx.scale_by_learning_rate(jnp.asarray(lr, jnp.float32)))
    assert jax.tree.structure(as_floats) == jax.tree.structure(as_arrays)
    ours, state = _steps(as_arrays, params, grads)
    theirs, their_state = _steps(as_floats, params, grads)
    assert _signature(state) == _signature(their_state)
    assert _signature(ours) == _signature(theirs)
