"""gradxform.tree_utils and gradxform.tree against optax.tree_utils and numpy; tree_get and
tree_set on the states of gradxform's optimizers.

Every function runs on the same multi-leaf trees (a matrix, a vector, a 3-D leaf, a scalar and a
None leaf) as optax's function of the same name; the functions compute the same operations, so
the results must be equal to the bit, dtypes included, in float32 and float64.
"""

import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform import tree, tree_utils

OT = optax.tree_utils


def _tree(dtype, seed):
    rng = np.random.default_rng(seed)
    return {"dense": {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype),
                      "b": jnp.asarray(rng.normal(size=(3,)), dtype)},
            "conv": jnp.asarray(rng.normal(size=(2, 3, 2)), dtype),
            "scale": jnp.asarray(rng.normal(), dtype),
            "frozen": None}


@pytest.fixture(params=["float32", "float64"])
def trees(request):
    """Three trees of one structure, in float32 or (with x64 on) float64."""
    with jax.enable_x64(request.param == "float64"):
        dtype = jnp.dtype(request.param)
        yield _tree(dtype, 0), _tree(dtype, 1), _tree(dtype, 2)


def assert_trees_equal(ours, theirs):
    if isinstance(theirs, np.dtype):
        assert ours == theirs
        return
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert jnp.result_type(a) == jnp.result_type(b)
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _sampler(key, shape, dtype):
    """A cheap stand-in for a random sampler that shows which key each leaf was given."""
    return jnp.full(shape, jax.random.key_data(key)[-1] % 1000, dtype)


# name -> the arguments, built from trees x, y, z of one structure.
CASES = {
    "tree_add": lambda x, y, z: (x, y, z),
    "tree_sub": lambda x, y, z: (x, y),
    "tree_mul": lambda x, y, z: (x, y),
    "tree_div": lambda x, y, z: (x, y),
    "tree_scale": lambda x, y, z: (0.3, x),
    "tree_add_scale": lambda x, y, z: (x, 0.7, y),
    "tree_conj": lambda x, y, z: (x,),
    "tree_real": lambda x, y, z: (x,),
    "tree_clip": lambda x, y, z: (x, -0.5, 0.4),
    "tree_where": lambda x, y, z: (x["scale"] > 0, x, y),
    "tree_batch_shape": lambda x, y, z: (x, (2, 1)),
    "tree_zeros_like": lambda x, y, z: (x,),
    "tree_ones_like": lambda x, y, z: (x, jnp.bfloat16),
    "tree_full_like": lambda x, y, z: (x, 3.5),
    "tree_vdot": lambda x, y, z: (x, y),
    "tree_sum": lambda x, y, z: (x,),
    "tree_max": lambda x, y, z: (x,),
    "tree_min": lambda x, y, z: (x,),
    "tree_allclose": lambda x, y, z: (x, jax.tree.map(lambda a: a * (1 + 1e-6), x)),
    "tree_cast": lambda x, y, z: (x, jnp.bfloat16),
    "tree_cast_like": lambda x, y, z: (x, tree_utils.tree_cast(y, jnp.float16)),
}
# Called outside jit: results that are not arrays (an int, a dtype), and the random functions,
# whose one compiled jax.random.split serves every call (inside the program above, each call
# would be compiled again).
EAGER_CASES = {
    "tree_split_key_like": lambda x, y, z: (jax.random.key(4), x),
    "tree_random_like": lambda x, y, z: (jax.random.key(5), x, _sampler),
    "tree_unwrap_random_key_data": lambda x, y, z: ({"k": jax.random.key(6), "x": x},),
    "tree_size": lambda x, y, z: (x,),
    "tree_dtype": lambda x, y, z: (x,),
}
NORMS = [(ord, squared) for ord in (None, 1, 2, jnp.inf, "inf", "infinity")
         for squared in (False, True)]


def test_same_values_as_optax_and_numpy(trees):
    """All the functions at once, in one compiled program (compiling each op of each leaf on its
    own would take most of the time); the reductions also against numpy in float64."""
    def both(x, y, z):
        out = {name: (getattr(tree_utils, name)(*make(x, y, z)), getattr(OT, name)(*make(x, y, z)))
               for name, make in CASES.items()}
        out["tree_norm"] = [(tree_utils.tree_norm(x, o, s), OT.tree_norm(x, o, s))
                            for o, s in NORMS]
        out["tree_sum_associative"] = (tree_utils.tree_sum(x, associative_reduction=True),
                                       OT.tree_sum(x, associative_reduction=True))
        return out

    results = jax.jit(both)(*trees)
    for name, make in EAGER_CASES.items():
        results[name] = (getattr(tree_utils, name)(*make(*trees)),
                         getattr(OT, name)(*make(*trees)))
    results["tree_split_key_like"] = jax.tree.map(jax.random.key_data,
                                                  results["tree_split_key_like"])
    assert set(results) == set(CASES) | set(EAGER_CASES) | {"tree_norm", "tree_sum_associative"}
    for name, pair in results.items():
        for ours, theirs in (pair if name == "tree_norm" else [pair]):
            try:
                assert_trees_equal(ours, theirs)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from e

    x, y, _ = trees
    fx, fy = ([np.asarray(v, np.float64) for v in jax.tree.leaves(t)] for t in (x, y))
    flat_x = np.concatenate([a.ravel() for a in fx])
    flat_y = np.concatenate([a.ravel() for a in fy])
    tol = 1e-6 if x["conv"].dtype == jnp.float32 else 1e-13
    for (ord, squared), (ours, _) in zip(NORMS, results["tree_norm"], strict=True):
        expected = np.linalg.norm(flat_x, ord=np.inf if ord in ("inf", "infinity") else ord)
        np.testing.assert_allclose(ours, expected ** 2 if squared else expected, rtol=tol)
    np.testing.assert_allclose(results["tree_vdot"][0], flat_x @ flat_y, rtol=tol)
    np.testing.assert_allclose(results["tree_sum"][0], flat_x.sum(), rtol=tol)
    np.testing.assert_allclose(results["tree_sum_associative"][0], flat_x.sum(), rtol=tol)
    assert results["tree_max"][0] == flat_x.max() and results["tree_min"][0] == flat_x.min()
    assert results["tree_size"][0] == flat_x.size == 4 * 3 + 3 + 12 + 1
    add_scale = results["tree_add_scale"][0]
    for leaf, a, b in zip(jax.tree.leaves(add_scale), fx, fy, strict=True):
        np.testing.assert_allclose(leaf, a + 0.7 * b, rtol=tol)
    assert add_scale["frozen"] is None
    assert tree_utils.tree_norm(x, ord=1, squared=True).dtype == x["conv"].dtype  # eager too


def test_tree_random_like_draws_optaxs_numbers():
    """With the default sampler, jax.random.normal (the sampler and the keys' assignment to the
    leaves are checked in both dtypes above, with a cheaper sampler)."""
    x = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3), "n": None}
    key = jax.random.key(5)
    assert_trees_equal(tree_utils.tree_random_like(key, x), OT.tree_random_like(key, x))


def test_complex_vdot_and_norm():
    """Complex leaves: the inner product Σ conj(x_i) y_i and the norm against numpy in complex128.

    optax 0.2.8 computes the inner product with jnp.vdot on this jax (its test for jax < 0.7.2
    compares version strings, and "0.10" < "0.7"), gradxform with the all-axes tensordot that
    optax uses on jax 0.7.2 to 0.9 (no ravel, so no data movement for sharded leaves): for complex
    leaves the two round differently, so both are compared with numpy, and with each other to the
    same float32 tolerance; for real leaves they are equal to the bit (above).
    """
    rng = np.random.default_rng(3)

    def draw():
        return {"a": jnp.asarray(rng.normal(size=(3, 2)) + 1j * rng.normal(size=(3, 2)),
                                 jnp.complex64),
                "b": jnp.asarray(rng.normal(size=4) + 1j * rng.normal(size=4), jnp.complex64)}

    x, y = draw(), draw()
    expected = sum(np.vdot(np.asarray(x[k], np.complex128), np.asarray(y[k], np.complex128))
                   for k in x)
    norm = np.sqrt(sum(np.sum(np.abs(np.asarray(v, np.complex128)) ** 2) for v in x.values()))
    got = jax.jit(lambda x, y: (
        tree_utils.tree_vdot(x, y), OT.tree_vdot(x, y), tree_utils.tree_norm(x),
        OT.tree_norm(x), tree_utils.tree_conj(x), OT.tree_conj(x)))(x, y)
    ours, theirs, our_norm, their_norm, our_conj, their_conj = got
    assert ours.dtype == jnp.complex64
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    np.testing.assert_allclose(theirs, expected, rtol=1e-6)
    np.testing.assert_allclose(our_norm, norm, rtol=1e-6)
    assert_trees_equal(our_norm, their_norm)
    for a, b in zip(jax.tree.leaves(our_conj), jax.tree.leaves(their_conj), strict=True):
        np.testing.assert_array_equal(a, b)


def test_empty_trees_as_optax():
    for name in ("tree_sum", "tree_max", "tree_min", "tree_size", "tree_norm", "tree_dtype"):
        assert_trees_equal(getattr(tree_utils, name)({}), getattr(OT, name)({}))


def test_tree_dtype_mixed_handlers_as_optax():
    mixed = {"a": jnp.zeros(2, jnp.float16), "b": jnp.zeros(3, jnp.float32),
             "c": jnp.zeros((), jnp.bfloat16)}
    for handler in ("promote", "highest"):
        assert tree_utils.tree_dtype(mixed, handler) == OT.tree_dtype(mixed, handler)
    with pytest.raises(ValueError, match=r"several dtypes .*'b' is float32.*mixed_dtype_handler"):
        tree_utils.tree_dtype(mixed)
    with pytest.raises(ValueError, match="are not ordered"):
        tree_utils.tree_dtype(mixed, "lowest")  # float16 and bfloat16: neither promotes
    with pytest.raises(ValueError, match="mixed_dtype_handler must be one of"):
        tree_utils.tree_dtype(mixed, "widest")


def test_slow_copies_as_optax_over_steps(trees):
    """Polyak averages and a target network followed for 20 steps under jit and scan."""
    x, y, _ = trees

    def run(lib):
        def step(carry, t):
            params, avg, target = carry
            params = jax.tree.map(lambda p: p - 0.1 * jnp.sin(p + t), params)
            avg = lib.incremental_update(params, avg, 0.1)
            target = lib.periodic_update(params, target, t, 5)
            return (params, avg, target), None
        return jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(20))[0])((x, y, y))

    assert_trees_equal(run(gx), run(optax))
    assert gx.incremental_update is tree_utils.incremental_update
    assert gx.periodic_update is tree_utils.periodic_update


def test_incremental_update_re_derived():
    new, old = {"a": jnp.asarray([1.0, 2.0]), "n": None}, {"a": jnp.asarray([3.0, -1.0]),
                                                          "n": None}
    got = tree_utils.incremental_update(new, old, 0.25)
    np.testing.assert_allclose(got["a"], [0.25 * 1 + 0.75 * 3, 0.25 * 2 - 0.75], rtol=1e-7)
    assert got["n"] is None


def test_signatures_are_optaxs():
    for name in tree_utils.__all__:
        theirs = getattr(OT, name, None) or getattr(optax, name)
        if inspect.isclass(theirs):
            continue

        def shape(f):
            return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]
        assert shape(getattr(tree_utils, name)) == shape(theirs), name


def test_tree_module_has_optax_tree_names():
    """`gradxform.tree.X` is `gradxform.tree_utils.tree_X` for every name optax.tree has, apart
    from map_params, which gradxform does not offer."""
    left_out = {"map_params"}
    optax_names = {n for n in dir(optax.tree) if not n.startswith("_")} - left_out
    assert optax_names == set(tree.__all__)
    for name in tree.__all__:
        assert getattr(tree, name) is getattr(tree_utils, "tree_" + name)


# -- bad input --


def test_mismatched_trees_name_the_path():
    x = _tree(jnp.float32, 0)
    y = {**x, "dense": {"w": x["dense"]["w"]}}
    with pytest.raises(ValueError, match=r"tree_add: tree_x and tree_y .*'dense/b' is in tree_x "
                                         r"but not in tree_y"):
        tree_utils.tree_add(x, y)
    with pytest.raises(ValueError, match=r"tree_sub: .*'dense/b'"):
        tree_utils.tree_sub(x, y)
    with pytest.raises(ValueError, match=r"tree_add: tree_x and other_trees\[0\]"):
        tree_utils.tree_add(x, x, y)
    short = {**x, "conv": x["conv"][:1]}
    with pytest.raises(ValueError, match=r"tree_vdot: leaf 'conv' has shape \(2, 3, 2\) in "
                                         r"tree_x but \(1, 3, 2\) in tree_y; the shapes must be"):
        tree_utils.tree_vdot(x, short)
    wide = {**x, "dense": {**x["dense"], "b": jnp.ones(4)}}
    with pytest.raises(ValueError, match=r"tree_mul: leaf 'dense/b' .*do not broadcast"):
        tree_utils.tree_mul(x, wide)
    with pytest.raises(ValueError, match="tree_norm: ord must be None, 2, 1 or inf"):
        tree_utils.tree_norm(x, ord=3)
    with pytest.raises(ValueError, match=r"incremental_update: step_size must be in \[0, 1\], "
                                         r"got 1.5"):
        tree_utils.incremental_update(x, x, 1.5)
    with pytest.raises(ValueError, match="periodic_update: update_period must be an integer >= 1"):
        tree_utils.periodic_update(x, x, 3, 0)


# -- tree_get / tree_set on optimizer states --


def _params():
    rng = np.random.default_rng(7)
    return {"body": {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                     "b": jnp.asarray(rng.normal(size=3), jnp.float32)},
            "head": {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}}


@functools.cache
def _trained(name, steps=3):
    """Params and state of OPTIMIZERS[name] after a few steps (under jit and scan)."""
    opt = OPTIMIZERS[name]()

    def step(carry, t):
        params, state = carry
        grads = jax.tree.map(lambda p: jnp.cos(p + t), params)
        updates, state = opt.update(grads, state, params)
        return (gx.apply_updates(params, updates), state), None

    params = _params()
    return jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps, dtype=jnp.float32))[0])(
        (params, opt.init(params)))


OPTIMIZERS = {
    "adamw": lambda: gx.adamw(1e-2, weight_decay=0.1),
    "chain_clip_adam": lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-2)),
    "partition": lambda: gx.partition({"body": gx.adam(1e-2), "head": gx.sgd(0.1, momentum=0.9)},
                                      {"body": {"w": "body", "b": "body"}, "head": {"w": "head"}}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_get_all_with_path_finds_what_optax_finds(name):
    """optax's own search run on gradxform's state is the reference: same paths, same values."""
    _, state = _trained(name)
    for key in ("count", "mu", "nu", "trace", "w", "ScaleByAdamState", "inner_states", "nothing"):
        ours = tree_utils.tree_get_all_with_path(state, key)
        theirs = OT.tree_get_all_with_path(state, key)
        assert [jax.tree_util.keystr(p) for p, _ in ours] == \
            [jax.tree_util.keystr(p) for p, _ in theirs]
        assert [str(e) for p, _ in ours for e in p] == [str(e) for p, _ in theirs for e in p]
        assert_trees_equal([v for _, v in ours], [v for _, v in theirs])


class _Outer(NamedTuple):
    count: Any
    inner: Any


class _Inner(NamedTuple):
    count: Any
    mu: Any


def test_nested_matches_in_optaxs_order():
    """Matches inside matches, dicts inside NamedTuples, a NamedTuple found by its class name:
    optax lists the outermost matches first, then those inside each; so does gradxform."""
    nested = ({"count": 1, "mu": {"count": 2}},
              _Outer(count=3, inner=_Inner(count=4, mu={"count": 5, "w": 6})),
              [_Inner(count=7, mu=None)])
    for key in ("count", "mu", "_Inner", "inner", "w", 0):
        ours = tree_utils.tree_get_all_with_path(nested, key)
        theirs = OT.tree_get_all_with_path(nested, key)
        assert [(jax.tree_util.keystr(p), v) for p, v in ours] == \
            [(jax.tree_util.keystr(p), v) for p, v in theirs], key
    assert [v for _, v in tree_utils.tree_get_all_with_path(nested, "count")] == [1, 3, 7, 2, 4, 5]
    assert tree_utils.tree_set(nested, count=0) == OT.tree_set(nested, count=0)
    assert tree_utils.tree_set(nested, w=60, count=0) == OT.tree_set(nested, w=60, count=0)
    with pytest.raises(ValueError, match="must have the tree structure of the value it replaces"):
        tree_utils.tree_set(nested, mu=None)  # optax would drop the dicts there
    in_list = lambda path, _: isinstance(path[0], jax.tree_util.SequenceKey) \
        and path[0].idx == 2  # noqa: E731
    assert tree_utils.tree_set(nested, in_list, _Inner=_Inner(8, None)) == \
        OT.tree_set(nested, in_list, _Inner=_Inner(8, None))


def test_tree_get_on_adamw():
    _, state = _trained("adamw")
    adam_state = gx.get_state(OPTIMIZERS["adamw"](), state, "scale_by_adam")
    assert tree_utils.tree_get(state, "mu") is adam_state.mu
    assert tree_utils.tree_get(state, "ScaleByAdamState") is adam_state
    assert tree_utils.tree_get(state, "eps", default="none") == "none"
    # every transformation of the chain keeps a count: ambiguous, and the message says so
    with pytest.raises(KeyError) as info:
        tree_utils.tree_get(state, "count")
    message = str(info.value)
    assert "found multiple values for 'count', at '0/ScaleByAdamState.count', " in message
    assert "pass one of these paths as the key" in message and "filtering=" in message
    for path in ("0/ScaleByAdamState.count", "ScaleByAdamState.count", "0/count"):
        assert tree_utils.tree_get(state, path) is adam_state.count
    by_filter = tree_utils.tree_get(
        state, "count", filtering=lambda path, _: path[-1].tuple_name == "ScaleByAdamState")
    assert by_filter is adam_state.count
    assert int(by_filter) == 3
    theirs = OT.tree_get(state, "count", filtering=lambda p, _: "ScaleByAdam" in str(p[-1]))
    assert theirs is by_filter


def test_tree_get_paths_in_chain_and_partition():
    _, state = _trained("chain_clip_adam")
    counts = tree_utils.tree_get_all_with_path(state, "count")
    assert [tree_utils.tree_get(state, jax.tree_util.keystr(p, simple=True, separator="/"))
            for p, _ in counts] == [v for _, v in counts]
    with pytest.raises(KeyError, match=r"'1/0/ScaleByAdamState.count', '1/1/CountState.count'"):
        tree_utils.tree_get(state, "1/count")  # two counts in the inner chain
    assert tree_utils.tree_get(state, "0/count") is state[0].count  # the path, not 1/0/...
    assert tree_utils.tree_get(state, "2/count", default="none") == "none"
    assert tree_utils.tree_get(state, "ClipByGlobalNormState.global_norm") is state[0].global_norm
    _, state = _trained("partition")
    body_mu = state.inner_states["body"][0].mu
    assert tree_utils.tree_get(state, "body/mu") is body_mu
    assert tree_utils.tree_get(state, "body/mu/body/w") is body_mu["body"]["w"]
    assert tree_utils.tree_get(state, "head/trace") is state.inner_states["head"][0].trace


def test_tree_set_resets_one_group_and_the_step_still_runs():
    opt = OPTIMIZERS["partition"]()
    params, state = _trained("partition")
    body_mu = tree_utils.tree_get(state, "body/mu")
    fresh = tree_utils.tree_set(state, **{"body/mu": tree_utils.tree_zeros_like(body_mu)})
    assert jax.tree.structure(fresh) == jax.tree.structure(state)
    new_mu = fresh.inner_states["body"][0].mu
    assert all(float(jnp.abs(v).sum()) == 0 for v in jax.tree.leaves(new_mu))
    assert fresh.inner_states["body"][0].nu is state.inner_states["body"][0].nu
    assert fresh.inner_states["head"] is state.inner_states["head"]
    step = jax.jit(opt.update)
    grads = jax.tree.map(jnp.ones_like, params)
    step(grads, state, params)
    updates, _ = step(grads, fresh, params)
    assert step._cache_size() == 1  # the new state fits the compiled step
    # Adam's first moment restarted from zero: the body's update is Adam's from m = 0
    assert all(jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates))


def test_tree_set_as_optax_and_under_jit():
    _, state = _trained("chain_clip_adam")
    five = jnp.asarray(5, jnp.int32)
    assert_trees_equal(tree_utils.tree_set(state, count=five), OT.tree_set(state, count=five))
    only_adam = lambda path, _: getattr(path[-1], "tuple_name", "") == "ScaleByAdamState"  # noqa: E731
    assert_trees_equal(tree_utils.tree_set(state, only_adam, count=five),
                       OT.tree_set(state, only_adam, count=five))
    # a Python number is stored in the dtype it replaces (optax would store the Python number)
    ours = tree_utils.tree_set(state, count=0)
    assert all(c.dtype == jnp.int32 and int(c) == 0
               for _, c in tree_utils.tree_get_all_with_path(ours, "count"))
    jitted = jax.jit(lambda s, c: tree_utils.tree_set(s, **{"ScaleByAdamState.count": c}))
    assert int(tree_utils.tree_get(jitted(state, five), "ScaleByAdamState.count")) == 5


def test_tree_set_refuses_values_that_would_corrupt_the_state():
    _, state = _trained("adamw")
    mu = tree_utils.tree_get(state, "mu")
    with pytest.raises(TypeError, match=r"tree_set: 'mu' at '0/ScaleByAdamState.mu/body/b' holds "
                                        r"float32, the new value float16; cast it"):
        tree_utils.tree_set(state, mu=tree_utils.tree_cast(mu, jnp.float16))
    with pytest.raises(ValueError, match=r"'mu' at '0/ScaleByAdamState.mu/head/w' has shape "
                                         r"\(3, 2\), the new value \(2,\)"):
        tree_utils.tree_set(state, mu={**mu, "head": {"w": jnp.zeros(2)}})
    with pytest.raises(ValueError, match=r"must have the tree structure of the value it replaces "
                                         r"at '0/ScaleByAdamState.mu'; 'body/b' is in the value"):
        tree_utils.tree_set(state, mu={"body": {"w": mu["body"]["w"]}, "head": mu["head"]})
    with pytest.raises(TypeError, match="holds int32, which cannot hold 2.5"):
        tree_utils.tree_set(state, **{"ScaleByAdamState.count": 2.5})
    with pytest.raises(KeyError, match=r"found no value for 'mus'; the names in the tree are: "
                                       r"'ScaleByAdamState', 'count', 'mu'"):
        tree_utils.tree_set(state, mus=mu)
    with pytest.raises(KeyError, match="that the filtering function keeps"):
        tree_utils.tree_set(state, lambda p, v: False, mu=mu)
