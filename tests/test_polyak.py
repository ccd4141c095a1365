"""The Polyak step size: optax's trajectories with value=, SPS_max re-derived in numpy on a
least-squares problem that it solves, the two readings of `scaling`, and validation."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

# f_min below the loss's minimum (about -6 here), so the Polyak steps are large and the cap
# γ_max is taken on some steps and not on others.
PAIRS = {
    "scale_by_polyak": lambda lib: lib.chain(lib.scale_by_polyak(-8.0, 0.05, 1e-6),
                                             lib.scale(-1.0)),
    "polyak_sgd": lambda lib: lib.polyak_sgd(0.2, 0.5, -8.0, 1e-3, "sps+"),
}


def test_same_trajectories_as_optax(three_leaf):
    three_leaf.assert_same_as_optax(PAIRS, with_value=True)


@pytest.mark.parametrize("name", ["scale_by_polyak", "polyak_sgd"])
def test_signature_is_optax(name):
    ours, theirs = inspect.signature(getattr(gx, name)), inspect.signature(getattr(optax, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()]


# -- a least-squares problem that interpolates (f* = 0), in jax and in numpy -------------------

def _problem():
    """½ ‖A θ - y‖² over a tree of a matrix, a vector and a 3-D leaf (27 unknowns), with
    y = A θ* for 40 equations: the minimum value is 0."""
    rng = np.random.default_rng(3)
    a, x_star = rng.normal(size=(40, 27)), rng.normal(size=27)
    return a, a @ x_star


def _flat(p):
    return jnp.concatenate([p["w"].ravel(), p["b"], p["k"].ravel()])


def _loss(p):
    a, y = _problem()
    r = jnp.asarray(a) @ _flat(p) - jnp.asarray(y)
    return 0.5 * jnp.sum(r * r)


def _polyak_step_np(x, *, scaling=1.0, gamma_max=1.0, f_min=0.0, eps=0.0, scale_after=False,
                    plus=False):
    """One step of SPS_max (Loizou et al. 2021): γ = min((f(x) - f*) / (‖∇f(x)‖² + ε), γ_max),
    x ← x - γ ∇f(x). With `scaling` s: optax's reading (the Polyak step of the scaled gradient
    s∇f) or, with `scale_after`, its docstring's (s times the Polyak step of ∇f)."""
    a, y = _problem()
    r = a @ x - y
    f, g = 0.5 * r @ r, a.T @ r
    gap = max(f - f_min, 0.0) if plus else f - f_min
    if scale_after:
        return x - scaling * min(gap / (g @ g + eps), gamma_max) * g
    d = scaling * g
    return x - min(gap / (d @ d + eps), gamma_max) * d


NUMPY = {
    "polyak_sgd": (lambda: gx.polyak_sgd(), {}),
    "polyak_sgd_capped": (lambda: gx.polyak_sgd(0.01, f_min=-1.0, eps=1e-3),
                          dict(gamma_max=0.01, f_min=-1.0, eps=1e-3)),
    "polyak_sgd_sps_plus": (lambda: gx.polyak_sgd(variant="sps+", f_min=5.0),
                            dict(f_min=5.0, plus=True)),
    "polyak_sgd_scaling": (lambda: gx.polyak_sgd(scaling=0.5), dict(scaling=0.5)),
    "polyak_then_learning_rate": (lambda: gx.chain(gx.scale_by_polyak(),
                                                   gx.scale_by_learning_rate(0.5)),
                                  dict(scaling=0.5, scale_after=True)),
}


def _run(opts, params, steps):
    def body(carries, _):
        out = []
        for opt, (p, s) in zip(opts, carries):
            value, g = jax.value_and_grad(_loss)(p)
            u, s = opt.update(g, s, p, value=value)
            out.append((gx.apply_updates(p, u), s))
        return out, [_flat(p) for p, _ in out]

    init = [(params, opt.init(params)) for opt in opts]
    return jax.jit(lambda: jax.lax.scan(body, init, None, length=steps)[1])()


def test_numpy_rederivation_and_convergence_on_least_squares(three_leaf):
    names, steps = sorted(NUMPY), 100
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.zeros_like, three_leaf.params("float64"))
        runs = _run([NUMPY[n][0]() for n in names], params, steps)
        loss = jax.jit(jax.vmap(lambda x: _loss({"w": x[:12].reshape(4, 3), "b": x[12:15],
                                                 "k": x[15:].reshape(2, 3, 2)})))
        # Each of the 100 iterates is the numpy step from the one before: Polyak steps on
        # least squares follow a trajectory that amplifies rounding (γ depends on the iterate),
        # so the rule is checked at every iterate rather than along two separate trajectories.
        for name, ours in zip(names, runs):
            xs = np.concatenate([np.zeros((1, 27)), np.asarray(ours)])
            ref = np.stack([_polyak_step_np(x, **NUMPY[name][1]) for x in xs[:-1]])
            np.testing.assert_allclose(xs[1:], ref, rtol=1e-12, atol=1e-13, err_msg=name)
        initial = float(_loss(params))
        # With f* = 0 known, SPS converges linearly: the loss falls by more than 1e6.
        assert float(loss(runs[names.index("polyak_sgd")])[-1]) < 1e-6 * initial
        # The two readings of scaling differ: optax's divides the Polyak step by s.
        a, b = runs[names.index("polyak_sgd_scaling")], runs[
            names.index("polyak_then_learning_rate")]
        assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-2
        # sps+ with f* above the minimum: once the loss is below f*, zero steps (plain sps
        # would climb back up to f*).
        plus = np.asarray(runs[names.index("polyak_sgd_sps_plus")])
        assert float(loss(plus[-2:-1])[0]) <= 5.0 and np.array_equal(plus[-1], plus[-2])
        assert not np.array_equal(plus[0], np.zeros(27))


def test_value_is_required_and_a_zero_gradient_gives_a_zero_step():
    opt = gx.polyak_sgd()
    p = {"w": jnp.ones(3), "b": jnp.ones(())}
    with pytest.raises(TypeError, match="scale_by_polyak.update: value, the loss at params"):
        opt.update(p, opt.init(p), p)
    zeros = jax.tree.map(jnp.zeros_like, p)
    u, _ = jax.jit(opt.update)(zeros, opt.init(p), p, value=jnp.float32(3.0))
    assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))


BAD = [
    (lambda: gx.scale_by_polyak(variant="sps++"),
     "scale_by_polyak: variant must be 'sps' or 'sps+', got 'sps++'"),
    (lambda: gx.scale_by_polyak(max_learning_rate=-1.0),
     "scale_by_polyak: max_learning_rate must be >= 0, got -1.0"),
    (lambda: gx.scale_by_polyak(eps=-1e-3), "scale_by_polyak: eps must be >= 0, got -0.001"),
    (lambda: gx.scale_by_polyak(float("nan")), "scale_by_polyak: f_min must be finite, got nan"),
    (lambda: gx.polyak_sgd(scaling=-1.0),
     "scale_by_learning_rate: learning_rate must be >= 0, got -1.0"),
    (lambda: gx.polyak_sgd(variant="armijo"), "variant must be 'sps' or 'sps+', got 'armijo'"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["scale_by_polyak", "polyak_sgd"])
def test_init_works_on_abstract_params(name, three_leaf):
    opt = getattr(gx, name)()
    params = three_leaf.params("float32")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shapes, concrete = jax.eval_shape(opt.init, abstract), opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    assert [(s.shape, s.dtype) for s in jax.tree.leaves(shapes)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(concrete)]


def test_value_reaches_it_inside_optax_chain():
    """to_optax gives an optax.GradientTransformationExtraArgs: optax.chain passes value= on."""
    p = {"w": jnp.array([1.0, 2.0])}
    g = {"w": jnp.array([2.0, 0.0])}
    opt = optax.chain(optax.identity(), gx.to_optax(gx.scale_by_polyak(max_learning_rate=10.0)))
    u, _ = opt.update(g, opt.init(p), p, value=jnp.float32(2.0))
    np.testing.assert_allclose(np.asarray(u["w"]), [1.0, 0.0])      # (2 - 0) / 4 · g
