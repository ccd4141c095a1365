"""Gradient centralization and normalization by the global norm: optax's trajectories, the
equations re-derived in numpy, the fast path's numbers, validation and abstract init."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

PAIRS = {
    "centralize": lambda lib: lib.chain(lib.centralize(), lib.trace(0.5), lib.scale(-0.02)),
    "normalize_by_update_norm": lambda lib: lib.normalize_by_update_norm(-0.05, 1e-3),
}


def test_same_trajectories_as_optax(three_leaf):
    three_leaf.assert_same_as_optax(PAIRS)


@pytest.mark.parametrize("name", ["centralize", "normalize_by_update_norm"])
def test_signature_is_optax(name):
    ours, theirs = inspect.signature(getattr(gx, name)), inspect.signature(getattr(optax, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()]


def _centralize_np(lr):
    """Yong et al. 2020, eq. 1, for weights laid out (outputs, inputs...): each output's
    gradient minus its mean, Φ(∇w_i) = ∇w_i - mean(∇w_i); vectors are left as they are."""
    def step(p, g):
        out = {}
        for k, x in p.items():
            d = g[k].copy()
            if d.ndim >= 2:
                for i in range(d.shape[0]):
                    d[i] = d[i] - d[i].mean()
            out[k] = x - lr * d
        return out
    return step


def _normalized_np(scale, eps):
    """u = s g / (‖g‖ + ε) with ‖g‖ the norm of the whole tree."""
    def step(p, g):
        norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
        return {k: x + scale * g[k] / (norm + eps) for k, x in p.items()}
    return step


NUMPY = {
    "centralize": (lambda: gx.chain(gx.centralize(), gx.scale_by_learning_rate(0.02)),
                   _centralize_np(0.02)),
    "normalize_by_update_norm": (lambda: gx.normalize_by_update_norm(-0.05, 1e-3),
                                 _normalized_np(-0.05, 1e-3)),
}


def test_numpy_rederivation(three_leaf):
    names = sorted(NUMPY)
    with jax.enable_x64(True):
        params = three_leaf.params("float64")
        runs = three_leaf.run([NUMPY[n][0]() for n in names], params)
        p0 = {k: np.asarray(v) for k, v in params.items()}
    for name, ours in zip(names, runs):
        p, rule = dict(p0), NUMPY[name][1]
        for t in range(100):
            p = rule(p, three_leaf.grad_np(p))
            for k in p:
                np.testing.assert_allclose(np.asarray(ours[k][t]), p[k], rtol=1e-12,
                                           atol=1e-13, err_msg=f"{name} {k} step {t + 1}")


def test_centralized_gradients_have_zero_mean_per_output_and_vectors_pass():
    g = {"w": jnp.arange(12.0).reshape(4, 3) ** 2, "b": jnp.arange(3.0),
         "k": jnp.arange(12.0).reshape(2, 3, 2) ** 1.5}
    u, _ = gx.centralize().update(g, gx.centralize().init(g))
    np.testing.assert_allclose(np.asarray(u["w"].mean(axis=1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(u["k"].mean(axis=(1, 2))), 0.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(g["b"]))


def test_make_step_gives_the_numbers_of_update_and_apply(three_leaf):
    """normalize_by_update_norm declares its whole-tree scalar and its element: the fused step
    leads a run with it and must give the numbers of update followed by apply_updates."""
    opt = gx.chain(gx.normalize_by_update_norm(-0.1), gx.trace(0.9))
    params = three_leaf.params("float32")
    grads = jax.grad(three_leaf.loss)(params)
    step = gx.make_step(opt, donate=False)
    p_ref, s_ref = jax.jit(gx.update_and_apply)(opt, grads, opt.init(params), params)
    p, s = step(grads, opt.init(params), params)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((p_ref, s_ref)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


BAD = [
    (lambda: gx.normalize_by_update_norm(0.0),
     "normalize_by_update_norm: scale_factor must be nonzero, got 0.0"),
    (lambda: gx.normalize_by_update_norm(eps=-1e-6),
     "normalize_by_update_norm: eps must be >= 0, got -1e-06"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["centralize", "normalize_by_update_norm"])
def test_init_works_on_abstract_params(name, three_leaf):
    opt = getattr(gx, name)()
    params = three_leaf.params("float32")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shapes, concrete = jax.eval_shape(opt.init, abstract), opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    assert [(s.shape, s.dtype) for s in jax.tree.leaves(shapes)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(concrete)]
