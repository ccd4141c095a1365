"""Layer-wise DoG: optax's trajectories, the paper's step size re-derived in numpy, the state it
keeps, validation and abstract init."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

PAIRS = {
    "scale_by_distance_over_gradients": lambda lib: lib.scale_by_distance_over_gradients(
        1e-3, 1e-8, jnp.float32, -1.0),
    "scale_by_distance_over_gradients_own_dtype": lambda lib: lib.chain(
        lib.scale_by_distance_over_gradients(1e-2, 1e-6, None), lib.scale(-0.5)),
}


def test_same_trajectories_as_optax(three_leaf):
    three_leaf.assert_same_as_optax(PAIRS)


def test_signature_is_optax():
    name = "scale_by_distance_over_gradients"
    ours, theirs = inspect.signature(getattr(gx, name)), inspect.signature(getattr(optax, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()]


def _ldog_np(x0, grad, steps, reps_rel, scale):
    """Ivgi et al. 2023, eq. 1 per layer, without ε: η_t = r̄_t / √G_t with
    r̄_t = max(r_ε (1 + ‖x_0‖), max_{s ≤ t} ‖x_s - x_0‖) and G_t = Σ_{s ≤ t} ‖g_s‖²;
    x_{t+1} = x_t + s η_t g_t (s = -1 descends)."""
    x = dict(x0)
    r = {k: reps_rel * (1 + np.linalg.norm(v)) for k, v in x0.items()}
    total = {k: 0.0 for k in x0}
    out = []
    for _ in range(steps):
        g = grad(x)
        for k in x:
            r[k] = max(r[k], np.linalg.norm(x[k] - x0[k]))
            total[k] += np.sum(g[k] ** 2)
            x[k] = x[k] + scale * r[k] / np.sqrt(total[k]) * g[k]
        out.append(dict(x))
    return {k: np.stack([q[k] for q in out]) for k in x0}


def test_numpy_rederivation(three_leaf):
    opt = gx.scale_by_distance_over_gradients(1e-3, 0.0, None, -1.0)
    with jax.enable_x64(True):
        params = three_leaf.params("float64")
        ours = three_leaf.run([opt], params)[0]
        x0 = {k: np.asarray(v) for k, v in params.items()}
    ref = _ldog_np(x0, three_leaf.grad_np, 100, 1e-3, -1.0)
    for k in ref:
        np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-12, atol=1e-13,
                                   err_msg=k)


def test_state_keeps_two_scalars_per_leaf_and_the_initial_params_in_float32(three_leaf):
    opt = gx.scale_by_distance_over_gradients()
    with jax.enable_x64(True):
        params = three_leaf.params("float64")
        state = opt.init(params)
        assert state._fields == ("count", "max_dist", "grad_sum_of_squares", "init_params")
        for k, p in params.items():
            assert state.max_dist[k].shape == () and state.grad_sum_of_squares[k].shape == ()
            assert state.init_params[k].dtype == jnp.float32
            np.testing.assert_allclose(float(state.max_dist[k]),
                                       1e-6 * (1 + np.linalg.norm(np.asarray(p))), rtol=1e-14)


BAD = [
    (lambda: gx.scale_by_distance_over_gradients(0.0),
     "scale_by_distance_over_gradients: reps_rel must be > 0, got 0.0"),
    (lambda: gx.scale_by_distance_over_gradients(eps=-1e-8),
     "scale_by_distance_over_gradients: eps must be >= 0, got -1e-08"),
    (lambda: gx.scale_by_distance_over_gradients(global_scale=float("inf")),
     "scale_by_distance_over_gradients: global_scale must be finite"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_reps_rel_is_a_constant_and_params_are_required():
    with pytest.raises(TypeError, match="reps_rel is a constant"):
        gx.scale_by_distance_over_gradients(lambda count: 1e-6)
    opt, p = gx.scale_by_distance_over_gradients(), {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="scale_by_distance_over_gradients.update: params are"):
        opt.update(p, opt.init(p))


def test_init_works_on_abstract_params(three_leaf):
    opt = gx.scale_by_distance_over_gradients()
    params = three_leaf.params("float32")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shapes, concrete = jax.eval_shape(opt.init, abstract), opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    assert [(s.shape, s.dtype) for s in jax.tree.leaves(shapes)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(concrete)]
