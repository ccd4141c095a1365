"""L-BFGS, the line searches and minimize: optax's numbers step by step and over a whole solve
(float64), scipy's minimum, vmap, has_aux, non-finite stops and refused objectives.

Each compiled solve costs seconds on a loaded machine, so the tests share a few programs: one
lax.scan per optimizer pair, one minimize per objective.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import gradxform as gx

pytestmark = pytest.mark.usefixtures("x64")


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _tree_loss(p):
    """A non-quadratic loss on a tree with a matrix, a vector and a 3-D leaf."""
    return (jnp.sum(jnp.cos(p["w"]) * p["w"] ** 2) + jnp.sum((p["b"] - 0.5) ** 4)
            + 0.1 * jnp.sum(p["t"] ** 2) * (1.0 + jnp.sum(p["b"] ** 2))
            + 0.05 * jnp.sum(p["w"] ** 2))


def _tree_params():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=(3,))),
            "t": jnp.asarray(rng.normal(size=(2, 2, 2)))}


def _trajectory(opt, value_and_grad, loss, params, steps):
    """Params, values and learning rates of `steps` full-batch iterations, in one lax.scan."""
    def body(carry, _):
        p, s = carry
        v, g = value_and_grad(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
        p = jax.tree.map(jnp.add, p, u)
        return (p, s), (p, v)

    return jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), None, length=steps)[1])(params)


# (gradxform, optax) pairs with the same arguments, and the problem they run on: the tree loss
# (a matrix, a vector and a 3-D leaf). They agree to rounding, not bit for bit: XLA may sum an
# inner product in another order inside the two programs, and where a line search's decision
# is close, such a difference grows (the Rosenbrock function in 6 dimensions amplifies 1e-14
# to 5e-9 over 40 steps with the options below; the tree loss keeps it at 3e-14).
PAIRS = {
    "lbfgs": ("tree", gx.lbfgs(), optax.lbfgs()),
    "lbfgs_options": (
        "tree",
        gx.lbfgs(memory_size=3, scale_init_precond=False, linesearch=gx.scale_by_zoom_linesearch(
            12, max_learning_rate=0.8, curv_rtol=0.5, approx_dec_rtol=None,
            initial_guess_strategy="keep")),
        optax.lbfgs(memory_size=3, scale_init_precond=False,
                    linesearch=optax.scale_by_zoom_linesearch(
                        12, max_learning_rate=0.8, curv_rtol=0.5, approx_dec_rtol=None,
                        initial_guess_strategy="keep"))),
    "backtracking_store_grad": (
        "tree",
        gx.chain(gx.sgd(0.5), gx.scale_by_backtracking_linesearch(15, store_grad=True)),
        optax.chain(optax.sgd(0.5), optax.scale_by_backtracking_linesearch(15, store_grad=True))),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_every_step_matches_optax(name):
    problem, ours, theirs = PAIRS[name]
    loss, params = ((_tree_loss, _tree_params()) if problem == "tree"
                    else (rosenbrock, jnp.array([-1.2, 1.0, -1.2, 1.0, 0.5, 0.3])))
    p_ours, v_ours = _trajectory(ours, gx.value_and_grad_from_state(loss), loss, params, 40)
    p_theirs, v_theirs = _trajectory(theirs, optax.value_and_grad_from_state(loss), loss,
                                     params, 40)
    np.testing.assert_allclose(v_ours, v_theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert float(v_ours[-1]) < 0.5 * float(v_ours[0])  # the steps are not trivial


def test_backtracking_without_stored_gradient_matches_optax():
    args = dict(decrease_factor=0.5, slope_rtol=0.3, increase_factor=2.0, max_learning_rate=2.0)
    ours = gx.chain(gx.sgd(0.5), gx.scale_by_backtracking_linesearch(10, **args))
    theirs = optax.chain(optax.sgd(0.5), optax.scale_by_backtracking_linesearch(10, **args))
    value_and_grad = lambda p, state: jax.value_and_grad(rosenbrock)(p)  # noqa: E731
    params = jnp.array([-1.2, 1.0, -1.2, 1.0, 0.5, 0.3])
    p_ours, _ = _trajectory(ours, value_and_grad, rosenbrock, params, 20)
    p_theirs, _ = _trajectory(theirs, value_and_grad, rosenbrock, params, 20)
    np.testing.assert_allclose(p_ours, p_theirs, rtol=1e-12, atol=1e-12)


def test_rosenbrock_solve_matches_optax_and_scipy():
    x0 = jnp.tile(jnp.array([-1.2, 1.0]), 50)
    result = gx.minimize(rosenbrock, x0, max_steps=2000, tol=1e-9)
    assert int(result.status) == gx.MinimizeStatus.CONVERGED, result.message()
    assert float(result.grad_norm) <= 1e-9

    # optax's loop, as its documentation writes it, for as many iterations.
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(rosenbrock)

    def body(_, carry):
        p, s = carry
        v, g = value_and_grad(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=rosenbrock)
        return optax.apply_updates(p, u), s

    p_optax, s_optax = jax.jit(lambda p, n: jax.lax.fori_loop(0, n, body, (p, opt.init(p))))(
        x0, result.num_steps)
    np.testing.assert_allclose(result.params, p_optax, rtol=1e-10, atol=1e-10)
    assert abs(float(result.value) - float(optax.tree.get(s_optax, "value"))) <= 1e-10
    # evaluations: the first, then one per line-search trial
    assert int(result.num_fun_evals) > int(result.num_steps)

    # scipy's L-BFGS-B reaches the same minimum, x* = (1, ..., 1), f* = 0.
    ref = scipy.optimize.minimize(scipy.optimize.rosen, np.asarray(x0),
                                  jac=scipy.optimize.rosen_der, method="L-BFGS-B",
                                  options=dict(maxiter=5000, gtol=1e-9, ftol=0))
    np.testing.assert_allclose(result.params, ref.x, atol=1e-7)
    np.testing.assert_allclose(result.params, np.ones(100), atol=1e-8)
    assert float(result.value) <= ref.fun + 1e-12


def _softmax_regression_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, size=60)
    return jnp.asarray(x), jnp.asarray(y)


def _softmax_loss(p, x, y, l2):
    logits = x @ p["w"] + p["b"]
    nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
    loss = nll + 0.5 * l2 * jnp.sum(p["w"] ** 2)
    return loss, {"nll": nll, "accuracy": jnp.mean(jnp.argmax(logits, 1) == y)}


def test_tree_params_args_and_aux_reach_scipys_minimum():
    x, y = _softmax_regression_data()
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
    result = gx.minimize(_softmax_loss, params, args=(x, y, 0.1), has_aux=True, tol=1e-10)
    assert bool(result.converged), result.message()
    aux = _softmax_loss(result.params, x, y, 0.1)[1]
    np.testing.assert_allclose(result.aux["nll"], aux["nll"], rtol=1e-14)
    np.testing.assert_allclose(result.aux["accuracy"], aux["accuracy"])

    def flat(z):
        p = {"w": jnp.asarray(z[:15]).reshape(5, 3), "b": jnp.asarray(z[15:])}
        v, g = jax.value_and_grad(lambda q: _softmax_loss(q, x, y, 0.1)[0])(p)
        return float(v), np.concatenate([np.ravel(g["w"]), np.ravel(g["b"])])

    ref = scipy.optimize.minimize(flat, np.zeros(18), jac=True, method="L-BFGS-B",
                                  options=dict(gtol=1e-12, ftol=0, maxiter=1000))
    assert abs(float(result.value) - ref.fun) <= 1e-10 * max(1.0, abs(ref.fun))
    np.testing.assert_allclose(result.params["w"], ref.x[:15].reshape(5, 3), atol=1e-6)


def test_vmap_solves_each_problem_as_alone():
    x, y = _softmax_regression_data()
    l2s = jnp.array([0.01, 0.1, 1.0])
    params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}

    def solve(l2):
        return gx.minimize(_softmax_loss, params, args=(x, y, l2), has_aux=True, tol=1e-8)

    batched = jax.vmap(solve)(l2s)
    for i, l2 in enumerate(l2s):
        alone = solve(l2)
        assert int(batched.num_steps[i]) == int(alone.num_steps)
        assert int(batched.status[i]) == int(alone.status) == gx.MinimizeStatus.CONVERGED
        np.testing.assert_allclose(batched.params["w"][i], alone.params["w"], rtol=1e-12,
                                   atol=1e-14)
    assert len(set(np.asarray(batched.num_steps).tolist())) > 1  # they stopped on their own


def test_any_optimizer_takes_gradient_steps_to_the_tolerance():
    target = jnp.array([1.0, -2.0, 3.0])
    loss = lambda p: 0.5 * jnp.sum((p - target) ** 2)  # noqa: E731
    result = gx.minimize(loss, jnp.zeros(3), solver=gx.sgd(0.5), tol=1e-8)
    assert bool(result.converged)
    # gradient descent on ½‖p - t‖² with step ½ halves the error each step: 2^-k ‖t‖ ≤ 1e-8
    k = int(np.ceil(np.log2(float(jnp.linalg.norm(target)) / 1e-8)))
    assert int(result.num_steps) == k and int(result.num_fun_evals) == k + 1
    np.testing.assert_allclose(result.params, target, atol=1e-8)


def _explodes(p):
    # finite up to p = 1, NaN beyond
    return jnp.sum((p - 3.0) ** 2) + jnp.where(p[0] > 1.0, jnp.nan, 0.0)


def test_a_non_finite_value_stops_the_solve_at_the_last_finite_iterate():
    result = gx.minimize(_explodes, jnp.zeros(2), solver=gx.sgd(0.1), max_steps=100)
    assert int(result.status) == gx.MinimizeStatus.NON_FINITE, result.message()
    assert "NaN" in result.message()
    assert bool(jnp.all(jnp.isfinite(result.params))) and np.isfinite(float(result.value))
    # the steps p ← p - 0.2 (p - 3) from 0: p_k = 3 (1 - 0.8^k); the last with p ≤ 1 is k = 1
    np.testing.assert_allclose(result.params, [0.6, 0.6])
    assert int(result.num_steps) == 2 and float(result.value) == float(_explodes(result.params))

    at_nan = gx.minimize(_explodes, jnp.full(2, 2.0), solver=gx.sgd(0.1))
    assert int(at_nan.status) == gx.MinimizeStatus.NON_FINITE and int(at_nan.num_steps) == 0


def test_objectives_that_are_not_scalars_are_refused_before_the_solve():
    with pytest.raises(ValueError, match=r"real floating-point scalar .* got float64\[3\]"):
        gx.minimize(lambda p: p ** 2, jnp.zeros(3))
    with pytest.raises(ValueError, match="pair"):
        gx.minimize(lambda p: jnp.sum(p), jnp.zeros(3), has_aux=True)
    with pytest.raises(ValueError, match="got int"):
        gx.minimize(lambda p: jnp.sum(p).astype(jnp.int32), jnp.zeros(3))
    with pytest.raises(ValueError, match="max_steps"):
        gx.minimize(rosenbrock, jnp.zeros(3), max_steps=-1)


def test_line_searches_say_what_they_miss():
    search = gx.scale_by_zoom_linesearch(5)
    p = jnp.ones(2)
    with pytest.raises(ValueError, match="value_fn missing"):
        search.update(p, search.init(p), p, value=1.0, grad=p)
    with pytest.raises(TypeError, match=r"\['batch'\] are not arguments of value_fn"):
        search.update(p, search.init(p), p, value=1.0, grad=p, value_fn=jnp.sum, batch=p)
    with pytest.raises(ValueError, match="initial_guess_strategy"):
        gx.scale_by_zoom_linesearch(5, initial_guess_strategy="two")
    with pytest.raises(ValueError, match="decrease_factor"):
        gx.scale_by_backtracking_linesearch(5, decrease_factor=1.5)
    # infinity is a value these take (no curvature condition, start at the largest step)
    gx.scale_by_zoom_linesearch(5, curv_rtol=jnp.inf)
    gx.scale_by_backtracking_linesearch(5, increase_factor=float("inf"))


def test_signatures_are_optaxs():
    import inspect

    for name in ("lbfgs", "scale_by_lbfgs", "scale_by_zoom_linesearch",
                 "scale_by_backtracking_linesearch", "value_and_grad_from_state"):
        ours = inspect.signature(getattr(gx, name)).parameters
        theirs = inspect.signature(getattr(optax, name)).parameters
        assert list(ours) == list(theirs), name
        assert [p.kind for p in ours.values()] == [p.kind for p in theirs.values()], name
