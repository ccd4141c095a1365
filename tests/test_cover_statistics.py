"""SM3: optax's trajectories, SM3-II re-derived in numpy from its cover sets, the memory it
keeps, signatures, validation and abstract init."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

PAIRS = {
    "scale_by_sm3": lambda lib: lib.chain(lib.scale_by_sm3(0.5, 0.9, 1e-6), lib.scale(-0.02)),
    "sm3": lambda lib: lib.sm3(0.1),
}


def test_same_trajectories_as_optax(three_leaf):
    three_leaf.assert_same_as_optax(PAIRS)


@pytest.mark.parametrize("name", ["scale_by_sm3", "sm3"])
def test_signature_is_optax(name):
    ours, theirs = inspect.signature(getattr(gx, name)), inspect.signature(getattr(optax, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()]


def _sm3_np(lr, b1=0.9, b2=1.0, eps=1e-8):
    """SM3-II (Anil et al. 2019, Algorithm 2) with the cover of a leaf's slices along each axis
    (rows and columns of a matrix; singletons for a vector), written over the cover sets:

        ν'(i) = (1 - β2) g(i)² + β2 min_{r: S_r ∋ i} μ'(r)      ((1 - β2) → 1 for β2 = 1)
        μ'(r) = max_{i ∈ S_r} ν'(i)
        m = β1 m + (1 - β1) g / √(ν' + ε),    θ ← θ - η m
    """
    w = 1.0 if b2 == 1 else 1 - b2

    def step(t, x, g, s):
        # the cover: set (a, j) holds the entries whose a-th index is j
        mu, m = s or ({(a, j): 0.0 for a in range(x.ndim) for j in range(x.shape[a])}, 0 * g)
        nu = np.zeros_like(g)
        for i in np.ndindex(*g.shape):
            nu[i] = w * g[i] ** 2 + b2 * min(mu[(a, i[a])] for a in range(x.ndim))
        mu = {(a, j): max(nu[i] for i in np.ndindex(*g.shape) if i[a] == j) for a, j in mu}
        pre = np.where(nu > 0, g / np.sqrt(nu + eps), 0.0)
        m = b1 * m + (1 - b1) * pre
        return x - lr * m, (mu, m)
    return step


NUMPY = {
    "sm3": (lambda: gx.sm3(0.1), _sm3_np(0.1)),
    "sm3_no_momentum": (lambda: gx.sm3(0.05, None), _sm3_np(0.05, b1=0.0)),
    # steps small enough that the fast-forgetting accumulators (β2 = 0.9) do not make the
    # trajectory amplify rounding in its last steps
    "scale_by_sm3_ema": (lambda: gx.chain(gx.scale_by_sm3(0.5, 0.9, 1e-6),
                                          gx.scale_by_learning_rate(0.01)),
                         _sm3_np(0.01, 0.5, 0.9, 1e-6)),
}


def test_numpy_rederivation(three_leaf):
    names = sorted(NUMPY)
    with jax.enable_x64(True):
        params = three_leaf.params("float64")
        runs = three_leaf.run([NUMPY[n][0]() for n in names], params)
        p0 = {k: np.asarray(v) for k, v in params.items()}
    for name, ours in zip(names, runs):
        rule, p, state = NUMPY[name][1], dict(p0), {k: None for k in p0}
        for t in range(1, 101):
            g = three_leaf.grad_np(p)
            for k in p:
                p[k], state[k] = rule(t, p[k], g[k], state[k])
            if t in (1, 10, 100):
                for k in p:
                    np.testing.assert_allclose(np.asarray(ours[k][t - 1]), p[k], rtol=1e-12,
                                               atol=1e-13, err_msg=f"{name} {k} step {t}")


def test_memory_is_one_accumulator_per_slice(three_leaf):
    state = gx.scale_by_sm3().init({**three_leaf.params("float32"), "s": jnp.zeros(())})
    assert {k: tuple(a.shape for a in v) for k, v in state.mu.items()} == {
        "w": ((4,), (3,)), "b": ((3,),), "k": ((2,), (3,), (2,)), "s": ((),)}


BAD = [
    (lambda: gx.scale_by_sm3(1.0), "scale_by_sm3: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.scale_by_sm3(b2=1.5), "scale_by_sm3: b2 must be in [0, 1], got 1.5"),
    (lambda: gx.scale_by_sm3(eps=-1e-8), "scale_by_sm3: eps must be >= 0, got -1e-08"),
    (lambda: gx.sm3(-0.1), "scale_by_learning_rate: learning_rate must be >= 0, got -0.1"),
    (lambda: gx.sm3(0.1, momentum=-0.5), "scale_by_sm3: b1 must be in [0, 1), got -0.5"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_complex_params_are_refused():
    with pytest.raises(TypeError, match="scale_by_sm3: leaf 'z' is complex"):
        gx.sm3(0.1).init({"z": jnp.ones(3, jnp.complex64)})


@pytest.mark.parametrize("name", ["scale_by_sm3", "sm3"])
def test_init_works_on_abstract_params(name, three_leaf):
    opt = gx.scale_by_sm3() if name == "scale_by_sm3" else gx.sm3(0.1)
    params = three_leaf.params("float32")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shapes, concrete = jax.eval_shape(opt.init, abstract), opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    assert [(s.shape, s.dtype) for s in jax.tree.leaves(shapes)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(concrete)]
