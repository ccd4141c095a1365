"""optax's utilities under their names: numerics, moment updates, linear algebra, extra args.

Each is checked against optax 0.2.8 on the same inputs (float64 to 1e-12, float32 tightly), and
the linear algebra also against numpy's eigendecomposition.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

NAMES = {
    "": ("scale_gradient", "safe_norm", "safe_root_mean_squares", "safe_int32_increment",
         "init_empty_state", "with_extra_args_support", "update_moment",
         "update_infinity_moment", "update_moment_per_elem_norm", "power_iteration",
         "matrix_inverse_pth_root", "nnls", "multi_normal"),
    "tree_utils": ("tree_update_moment", "tree_update_infinity_moment",
                   "tree_update_moment_per_elem_norm", "tree_bias_correction"),
    "tree": ("update_moment", "update_infinity_moment", "update_moment_per_elem_norm",
             "bias_correction"),
}


def _namespace(module, name):
    return getattr(module, name) if name else module


@pytest.mark.parametrize("space", sorted(NAMES))
def test_signatures_are_optax_s(space):
    for name in NAMES[space]:
        ours = inspect.signature(getattr(_namespace(gx, space), name))
        theirs = inspect.signature(getattr(_namespace(optax, space), name))
        assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in theirs.parameters.values()], name


def _tree(dtype, key=0, complex_leaf=False):
    k = jax.random.split(jax.random.PRNGKey(key), 3)
    tree = {"w": jax.random.normal(k[0], (4, 3), dtype), "b": jax.random.normal(k[1], (3,), dtype),
            "t": jax.random.normal(k[2], (2, 2, 3), dtype)}
    if complex_leaf:
        tree["c"] = (tree["b"] + 1j * tree["b"][::-1]).astype(
            jnp.complex128 if dtype == jnp.float64 else jnp.complex64)
    return tree


def _close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 1e-12), (jnp.float32, 1e-6)])
def test_moment_updates_match_optax_over_100_steps(dtype, rtol):
    with jax.enable_x64(True):
        grads = jax.tree.map(lambda *g: jnp.stack(g),
                             *[_tree(dtype, key=i, complex_leaf=True) for i in range(100)])
        zeros = jax.tree.map(lambda g: jnp.zeros_like(g[0]), grads)

        @jax.jit
        def run(grads):
            def step(m, g):
                return tuple(f(g, mi, 0.9, a) for f, mi, a in zip(fns, m, args, strict=True)), None
            return jax.lax.scan(step, (zeros,) * len(fns), grads)[0]

        args = (2, 3, 1e-8, 2, 3, 1e-8)
        fns = (gx.tree_utils.tree_update_moment, gx.tree_utils.tree_update_moment_per_elem_norm,
               gx.tree_utils.tree_update_infinity_moment, optax.tree_utils.tree_update_moment,
               optax.tree_utils.tree_update_moment_per_elem_norm,
               optax.tree_utils.tree_update_infinity_moment)
        out = run(grads)
        for ours, theirs in zip(out[:3], out[3:], strict=True):
            _close(ours, theirs, rtol)
            assert jax.tree.map(lambda x: x.dtype, ours) == jax.tree.map(lambda x: x.dtype, theirs)
        moment = _tree(dtype)
        for count in (1, 7, 100):
            _close(gx.tree_utils.tree_bias_correction(moment, 0.999, count),
                   optax.tree_utils.tree_bias_correction(moment, 0.999, jnp.asarray(count)),
                   1e-13 if dtype == jnp.float64 else 1e-6)
        ref = {k: np.asarray(v) / (1 - 0.999 ** 7) for k, v in moment.items()}
        _close(gx.tree.bias_correction(moment, 0.999, 7), ref,
               1e-13 if dtype == jnp.float64 else 1e-6)


def test_none_leaves_stay_none():
    g = {"a": jnp.ones(2), "b": None}
    out = gx.update_moment(g, {"a": jnp.zeros(2), "b": None}, 0.5, 2)
    assert out["b"] is None
    np.testing.assert_allclose(out["a"], 0.5)


def test_safe_norms_match_optax_with_their_gradients():
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(1), (4, 3), jnp.float64)
        mixed = jnp.zeros_like(x).at[0].set(x[0])  # row norms on both sides of min_norm
        for arr, kw in ((x, {}), (jnp.zeros_like(x), {}),
                        (mixed, dict(ord=1, axis=1, keepdims=True))):
            f_ours = lambda v, kw=kw: gx.safe_norm(v, 0.01, **kw).sum()  # noqa: E731
            f_theirs = lambda v, kw=kw: optax.safe_norm(v, 0.01, **kw).sum()  # noqa: E731
            np.testing.assert_allclose(f_ours(arr), f_theirs(arr), rtol=1e-12)
            np.testing.assert_allclose(jax.grad(f_ours)(arr), jax.grad(f_theirs)(arr),
                                       rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(gx.safe_root_mean_squares(arr, 0.01),
                                       optax.safe_root_mean_squares(arr, 0.01), rtol=1e-12)
            g_ours = jax.grad(lambda v: gx.safe_root_mean_squares(v, 0.01))(arr)
            g_theirs = jax.grad(lambda v: optax.safe_root_mean_squares(v, 0.01))(arr)
            np.testing.assert_allclose(g_ours, g_theirs, rtol=1e-12)
            assert np.all(np.isfinite(g_ours))
        ref = np.sqrt(np.mean(np.asarray(x) ** 2))
        np.testing.assert_allclose(gx.safe_root_mean_squares(x, 0.01), ref, rtol=1e-14)
        np.testing.assert_array_equal(jax.grad(lambda v: gx.safe_norm(v, 0.01))(
            jnp.zeros(3)), np.zeros(3))


def test_scale_gradient_scales_the_backward_pass_only():
    x = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}

    def loss(fn, scale):
        return lambda t: jax.tree.reduce(jnp.add, jax.tree.map(
            lambda v: jnp.sum(v ** 2), fn(t, scale)))

    for scale in (0.0, 1.0, jnp.asarray(-3.0)):
        assert jax.tree.all(jax.tree.map(jnp.array_equal, gx.scale_gradient(x, scale), x))
        ours = jax.grad(loss(gx.scale_gradient, scale))(x)
        theirs = jax.grad(loss(optax.scale_gradient, scale))(x)
        _close(ours, theirs, 1e-7)
        _close(ours, jax.tree.map(lambda v, s=float(scale): 2 * v * s, x), 1e-7)
    _close(jax.jit(jax.grad(loss(gx.scale_gradient, jnp.asarray(0.5))))(x),
           jax.tree.map(lambda v: v, x), 1e-7)


def test_counters_and_empty_state():
    for c in (0, 41, np.iinfo(np.int32).max):
        c = jnp.asarray(c, jnp.int32)
        assert gx.safe_int32_increment(c) == optax.safe_int32_increment(c)
        assert gx.safe_int32_increment(c).dtype == jnp.int32
    assert gx.init_empty_state({"a": jnp.ones(2)}) == gx.EmptyState()


def test_with_extra_args_support():
    tx = gx.adam(1e-3)
    assert gx.with_extra_args_support(tx) is tx
    params = {"a": jnp.ones(3)}
    wrapped = gx.with_extra_args_support(optax.sgd(0.1))  # update takes no extra arguments
    assert isinstance(wrapped, gx.from_optax)
    state = wrapped.init(params)
    updates, _ = wrapped.update(params, state, params, value=1.0, unused=2)
    np.testing.assert_allclose(updates["a"], -0.1)
    chained = gx.chain(gx.with_extra_args_support(optax.scale(2.0)), gx.scale_by_polyak())
    chained.update(params, chained.init(params), params, value=jnp.asarray(1.0))


@pytest.mark.parametrize("p", [2, 4])
def test_matrix_inverse_pth_root_matches_optax_and_numpy(p):
    with jax.enable_x64(True):
        rng = np.random.default_rng(p)
        b = rng.normal(size=(5, 5))
        a = jnp.asarray(b @ b.T + 0.5 * np.eye(5))
        ours, err_ours = gx.matrix_inverse_pth_root(a, p, ridge_epsilon=1e-6)
        theirs, err_theirs = optax.matrix_inverse_pth_root(a, p, ridge_epsilon=1e-6)
        # optax iterates with float32 identities, so its result agrees with the float64
        # eigendecomposition to float32's precision, and ours equals it.
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(err_ours, err_theirs, rtol=1e-12)
        w, v = np.linalg.eigh(np.asarray(a))
        lam = w.max()
        ref = (v * (w + 1e-6 * lam) ** (-1.0 / p)) @ v.T
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
        one, _ = gx.matrix_inverse_pth_root(jnp.asarray([[4.0]]), 2)
        np.testing.assert_allclose(one, optax.matrix_inverse_pth_root(jnp.asarray([[4.0]]), 2)[0],
                                   rtol=1e-12)


def test_power_iteration_matches_optax_and_numpy():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        b = rng.normal(size=(6, 6))
        a = jnp.asarray(b @ b.T)
        lam, vec = gx.power_iteration(a, num_iters=500, error_tolerance=1e-10)
        lam_o, vec_o = optax.power_iteration(a, num_iters=500, error_tolerance=1e-10)
        np.testing.assert_allclose(lam, lam_o, rtol=1e-12)
        np.testing.assert_allclose(vec, vec_o, rtol=1e-10, atol=1e-12)
        w, v = np.linalg.eigh(np.asarray(a))
        np.testing.assert_allclose(lam, w[-1], rtol=1e-9)
        np.testing.assert_allclose(abs(np.dot(vec, v[:, -1])), 1.0, rtol=1e-9)
        # a matrix-free product on a tree, with the key of optax's default start
        tree_v0 = {"x": jnp.ones(3), "y": jnp.ones(3)}

        def mvp(t):
            full = jnp.concatenate([t["x"], t["y"]])
            out = a @ full
            return {"x": out[:3], "y": out[3:]}

        lam_t, _ = gx.power_iteration(mvp, v0=tree_v0, num_iters=500, error_tolerance=1e-10)
        lam_to, _ = optax.power_iteration(mvp, v0=tree_v0, num_iters=500, error_tolerance=1e-10)
        np.testing.assert_allclose(lam_t, lam_to, rtol=1e-12)
        key = jax.random.PRNGKey(3)
        np.testing.assert_allclose(gx.power_iteration(a, key=key, num_iters=3)[1],
                                   optax.power_iteration(a, key=key, num_iters=3)[1],
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="v0 must be given"):
        gx.power_iteration(mvp)


def test_nnls_matches_optax_and_scipy():
    import scipy.optimize

    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        a = jnp.asarray(rng.normal(size=(8, 5)))
        b = jnp.asarray(rng.normal(size=(8,)))
        ours = gx.nnls(a, b, 2000)
        np.testing.assert_allclose(ours, optax.nnls(a, b, 2000), rtol=1e-12, atol=1e-14)
        ref, _ = scipy.optimize.nnls(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(ours, ref, rtol=1e-8, atol=1e-10)
        assert np.any(ref == 0) and np.all(np.asarray(ours) >= 0)  # a constraint is active
        b2 = jnp.stack([b, -b], axis=1)
        np.testing.assert_allclose(gx.nnls(a, b2, 50, L=100.0), optax.nnls(a, b2, 50, L=100.0),
                                   rtol=1e-12, atol=1e-14)


def test_multi_normal_matches_optax_and_scipy():
    import scipy.stats

    with jax.enable_x64(True):
        loc = jnp.asarray([[0.5, -1.0, 2.0], [0.0, 1.0, 3.0]])
        log_scale = jnp.asarray([0.1, -0.3, 0.7])
        ours, theirs = gx.multi_normal(loc, log_scale), optax.multi_normal(loc, log_scale)
        key = jax.random.PRNGKey(5)
        x = ours.sample((4,), key)
        assert x.shape == (4, 2, 3)
        np.testing.assert_allclose(x, theirs.sample((4,), key), rtol=1e-12)
        np.testing.assert_allclose(ours.log_prob(x), theirs.log_prob(x), rtol=1e-12)
        ref = scipy.stats.norm.logpdf(np.asarray(x), np.asarray(loc),
                                      np.exp(np.asarray(log_scale))).sum(axis=(-2, -1))
        np.testing.assert_allclose(ours.log_prob(x), ref, rtol=1e-12)
        for a, b in zip(ours.params, theirs.params, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ours.log_scale, theirs.log_scale)
        g = jax.grad(lambda p: gx.multi_normal(*p).log_prob(x).sum())(ours.params)
        g_ref = jax.grad(lambda p: optax.multi_normal(*p).log_prob(x).sum())(theirs.params)
        for a, b in zip(g, g_ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
