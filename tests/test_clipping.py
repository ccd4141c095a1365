"""Clipping and gradient hygiene: optax's numbers over 100 steps, and what clipping buys."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

# The clips feed momentum SGD, which passes rounding differences ((g·(c/‖g‖) here, (g/‖g‖)·c
# in optax) on without amplifying them (Adam's normalisation of near-zero gradients would).


@pytest.fixture
def grad_fn(noisy_gradients):
    """g_t(θ) = θ - ½ + noise_t, the noise 10x larger every fifth step (to trip the clips).

    With `nan_steps`, the first coordinate of every leaf is NaN at those steps.
    """
    return lambda params, nan_steps=(): noisy_gradients(params, spike_every=5,
                                                        nan_steps=nan_steps)


CASES = {
    "clip": (lambda: gx.clip(0.8), lambda: optax.clip(0.8)),
    # thresholds that clip the 10x steps and (mostly) not the others
    "clip_by_block_rms": (lambda: gx.clip_by_block_rms(3.0), lambda: optax.clip_by_block_rms(3.0)),
    "clip_by_global_norm": (lambda: gx.clip_by_global_norm(10.0),
                            lambda: optax.clip_by_global_norm(10.0)),
    "adaptive_grad_clip": (lambda: gx.adaptive_grad_clip(0.5, eps=1e-2),
                           lambda: optax.adaptive_grad_clip(0.5, eps=1e-2)),
    "zero_nans": (lambda: gx.zero_nans(), lambda: optax.zero_nans()),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_trajectories_as_optax(dtype, mixed_params, grad_fn, trajectories):
    """Each clip followed by momentum SGD, 100 steps: params equal optax's at every step."""
    with jax.enable_x64(dtype == "float64"):
        params = mixed_params(dtype)
        grads = grad_fn(params)
        nan_grads = grad_fn(params, nan_steps=(3, 40))
        steppers = []
        for name, (ours, theirs) in CASES.items():
            g = nan_grads if name == "zero_nans" else grads
            for opt in (gx.chain(ours(), gx.sgd(0.05, 0.9)),
                        optax.chain(theirs(), optax.sgd(0.05, 0.9))):
                steppers.append(trajectories.stepper(opt, params, g))
        steppers.append(trajectories.stepper(gx.sgd(0.05, 0.9), params, grads))
        outs = trajectories.run(steppers)
        unclipped = outs[-1][0]["dense"]["w"]
        for i, name in enumerate(CASES):
            (ours_p, _), (theirs_p, _) = outs[2 * i], outs[2 * i + 1]
            assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(ours_p))
            trajectories.assert_close(ours_p, theirs_p, dtype, name)
            if name != "zero_nans":  # the clip is active: the path differs from plain SGD's
                assert np.abs(ours_p["dense"]["w"] - unclipped).max() > 1e-2, name


def test_clipping_before_adam_bounds_the_second_moment(mixed_params, grad_fn, trajectories):
    """After clip_by_global_norm(c), Σ_i v_i ≤ c² (1 - β2^t): Adam's memory of g² is bounded."""
    c = 5.0
    params = mixed_params("float32")
    grads = grad_fn(params)
    big = lambda p, t: jax.tree.map(lambda g: 100.0 * g, grads(p, t))  # noqa: E731
    clipped = gx.chain(gx.clip_by_global_norm(c), gx.scale_by_adam(), gx.scale(-1e-3))
    plain = gx.chain(gx.scale_by_adam(), gx.scale(-1e-3))
    (_, s_clipped), (_, s_plain) = trajectories.run(
        [trajectories.stepper(clipped, params, big), trajectories.stepper(plain, params, big)])

    def total_nu(opt, states):
        nu = gx.get_state(opt, states, "scale_by_adam").nu
        per_step = [jnp.sum(v, axis=tuple(range(1, v.ndim))) for v in jax.tree.leaves(nu)]
        return np.asarray(sum(per_step))

    bound = c**2 * (1 - 0.999 ** np.arange(1, 101))
    assert np.all(total_nu(clipped, s_clipped) <= bound * (1 + 1e-5))
    assert np.all(total_nu(plain, s_plain)[5:] > 100 * bound[5:])  # unclipped, v grows with ‖g‖²


def test_global_norm_clip_is_one_scalar_factor_and_logs_the_norm(mixed_params, grad_fn):
    params = mixed_params("float32")
    g = grad_fn(params)(params, 0)  # a spike step: ‖g‖ ≈ 40
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]).astype(np.float64)
    norm = np.linalg.norm(flat)
    opt = gx.chain(gx.clip_by_global_norm(2.0), gx.scale(-1.0))
    u, state = opt.update(g, opt.init(params), params)
    logged = gx.get_state(opt, state, "clip_by_global_norm").global_norm
    np.testing.assert_allclose(logged, norm, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(g)):
        np.testing.assert_allclose(x, -np.asarray(y, np.float64) * 2.0 / norm, rtol=1e-6)
    # below the threshold the factor is exactly one
    small = jax.tree.map(lambda x: x * 1e-3, g)
    u_small, _ = gx.clip_by_global_norm(2.0).update(small, gx.clip_by_global_norm(2.0).init(params))
    for x, y in zip(jax.tree.leaves(u_small), jax.tree.leaves(small)):
        np.testing.assert_array_equal(x, y)
    # one multiplication per leaf: no select between clipped and unclipped leaves
    t = gx.clip_by_global_norm(2.0)
    jaxpr = jax.make_jaxpr(lambda g, s: t.update(g, s))(g, t.init(params))
    selects = [e for e in equations(jaxpr.jaxpr) if e.primitive.name == "select_n"]
    assert all(e.outvars[0].aval.shape == () for e in selects)  # only the step count's


def equations(jaxpr):
    """Every equation of a jaxpr, inner jaxprs (pjit, custom_jvp) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from equations(inner)


def test_zero_nans_records_where_it_found_them(mixed_params, grad_fn):
    params = mixed_params("float32")
    g = grad_fn(params, nan_steps=(0,))(params, 0)
    u, state = gx.zero_nans().update(g, gx.zero_nans().init(params))
    assert all(bool(f) for f in jax.tree.leaves(state.found_nan))
    assert all(np.isfinite(x).all() and x.ravel()[0] == 0 for x in jax.tree.leaves(u))
    assert state.found_nan["frozen"] is None


def test_bad_hyperparameters_and_missing_params_are_reported(mixed_params):
    with pytest.raises(ValueError, match=r"clip_by_global_norm: max_norm must be > 0, got 0"):
        gx.clip_by_global_norm(0.0)
    with pytest.raises(ValueError, match=r"clip: max_delta must be >= 0"):
        gx.clip(-1.0)
    params = mixed_params("float32")
    agc = gx.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match=r"adaptive_grad_clip.update: params are required"):
        agc.update(params, agc.init(params))


# -- per-example clipping (DP-SGD) ----------------------------------------------------------------


def _per_example_grads(dtype=jnp.float32, n=16):
    rng = np.random.default_rng(7)
    scales = np.where(np.arange(n) % 3 == 0, 10.0, 0.3)  # some examples above any clip below
    return {
        "dense": {"w": jnp.asarray(rng.normal(size=(n, 4, 3)) * scales[:, None, None], dtype),
                  "b": jnp.asarray(rng.normal(size=(n, 3)) * scales[:, None], dtype)},
        "head": jnp.asarray(rng.normal(size=(n, 5)), dtype),
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("clip_norm", [0.0, 0.5, 2.0, 1e6, float("inf")])
def test_per_example_clipping_matches_optax(dtype, clip_norm, trajectories):
    with jax.enable_x64(dtype == jnp.float64):
        grads = _per_example_grads(dtype)
        tol = dict(rtol=1e-6, atol=1e-6) if dtype == jnp.float32 else dict(rtol=1e-13, atol=1e-13)
        ours = jax.jit(gx.per_example_global_norm_clip)(grads, clip_norm)
        theirs = optax.per_example_global_norm_clip(grads, clip_norm)
        trajectories.assert_close(ours[0], theirs[0], tol)
        assert int(ours[1]) == int(theirs[1])
        for uniform in (True, False):
            ours = gx.per_example_layer_norm_clip(grads, clip_norm, uniform=uniform)
            theirs = optax.per_example_layer_norm_clip(grads, clip_norm, uniform=uniform)
            trajectories.assert_close(ours[0], theirs[0], tol)
            assert jax.tree.map(int, ours[1]) == jax.tree.map(int, theirs[1])


def test_per_example_global_norm_clip_is_the_dp_sgd_sum():
    # numpy: each example's whole gradient scaled by min(1, C/‖g_i‖), then summed.
    grads = _per_example_grads(jnp.float32)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
    norms = np.sqrt(sum(np.sum(x.reshape(len(x), -1) ** 2, axis=1) for x in leaves))
    factors = np.minimum(1.0, 1.5 / norms)
    summed, clipped = gx.per_example_global_norm_clip(grads, 1.5)
    for ours, x in zip(jax.tree.leaves(summed), leaves):
        np.testing.assert_allclose(ours, np.tensordot(factors, x, axes=1), rtol=1e-5, atol=1e-6)
    assert int(clipped) == int(np.sum(norms > 1.5)) > 0


@pytest.mark.parametrize("uniform", [True, False])
def test_per_example_layer_norm_clip_bounds_each_example_by_the_global_clip(uniform):
    # Σ_k C_k² = C²: one example, clipped leaf by leaf, has global norm at most C.
    grads = _per_example_grads(jnp.float32, n=1)
    summed, clipped = gx.per_example_layer_norm_clip(grads, 0.7, uniform=uniform)
    assert float(gx.global_norm(summed)) <= 0.7 * (1 + 1e-6)
    assert sum(jax.tree.leaves(jax.tree.map(int, clipped))) > 0


@pytest.mark.parametrize("grads, message", [
    ({"w": jnp.ones((4, 3)), "s": jnp.ones(())}, "leaf 's' is a scalar"),
    ({"w": jnp.ones((4, 3)), "b": jnp.ones((5,))}, r"different numbers of examples.*4 at 'w'"),
    ({}, "empty tree"),
])
def test_per_example_clipping_names_the_bad_leaf(grads, message):
    for fn in (gx.per_example_global_norm_clip, gx.per_example_layer_norm_clip):
        with pytest.raises(ValueError, match=message):
            fn(grads, 1.0)


def test_per_example_clipping_refuses_a_negative_or_nan_clip():
    grads = _per_example_grads()
    with pytest.raises(ValueError, match="l2_norm_clip must be >= 0, got -1.0"):
        gx.per_example_global_norm_clip(grads, -1.0)
    with pytest.raises(ValueError, match="global_l2_norm_clip must be >= 0, got nan"):
        gx.per_example_layer_norm_clip(grads, float("nan"))


# -- global_norm's orders and unitwise_clip, as optax.tree.norm and optax.transforms -----------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_global_norm_orders_are_those_of_optax_tree_norm(dtype, three_leaf):
    with jax.enable_x64(dtype == "float64"):
        tree = {**three_leaf.params(dtype), "none": None}
        tol = dict(rtol=1e-14) if dtype == "float64" else dict(rtol=1e-6)
        for ord_ in (None, 2, 1, np.inf, "inf", "infinity"):
            for squared in (False, True):
                ours = gx.global_norm(tree, ord=ord_, squared=squared)
                theirs = optax.tree.norm(tree, ord=ord_, squared=squared)
                assert ours.dtype == jnp.dtype(dtype)
                np.testing.assert_allclose(float(ours), float(theirs), **tol,
                                           err_msg=f"ord={ord_}, squared={squared}")
        leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
        flat = np.concatenate(leaves)
        np.testing.assert_allclose(float(gx.global_norm(tree, ord=1)), np.sum(np.abs(flat)),
                                   **tol)
        np.testing.assert_allclose(float(gx.global_norm(tree, squared=True)), flat @ flat, **tol)


def test_global_norm_of_a_tree_without_elements_and_a_bad_order():
    empty = {"a": jnp.zeros((0,)), "b": None}
    for ord_ in (None, 1, np.inf):
        assert float(gx.global_norm(empty, ord=ord_)) == 0.0   # optax's ∞-norm gives -inf here
    with pytest.raises(ValueError, match="global_norm: ord must be None, 1, 2 or inf, got 3"):
        gx.global_norm({"a": jnp.ones(2)}, ord=3)


def test_unitwise_clip_is_optax_transforms_unitwise_clip():
    rng = np.random.default_rng(4)
    g = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    g_norm = gx.unitwise_norm(g)
    max_norm = jnp.broadcast_to(jnp.asarray([0.5, 5.0, 1.0], jnp.float32), g.shape)
    for div_eps in (1e-6, 10.0):
        np.testing.assert_array_equal(
            np.asarray(gx.unitwise_clip(g_norm, max_norm, g, div_eps)),
            np.asarray(optax.transforms.unitwise_clip(g_norm, max_norm, g, div_eps)))
    # units below their bound pass unchanged, the others are scaled to norm m_i
    out = gx.unitwise_clip(g_norm, max_norm, g)
    np.testing.assert_allclose(np.asarray(gx.unitwise_norm(out))[0],
                               np.minimum(np.asarray(g_norm)[0], [0.5, 5.0, 1.0]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"unitwise_clip: g_norm, max_norm and grad must have "
                                         r"one shape, got g_norm \(1, 3\)"):
        gx.unitwise_clip(g_norm[:1], max_norm, g)
