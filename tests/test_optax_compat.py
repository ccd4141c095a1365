"""Code written for optax runs with gradxform in its place: optax's signatures, optax's names
(inject_hyperparams, multi_transform, scale_by_schedule, GradientTransformation, ...), optax
transformations inside gradxform wrappers, masks as arrays and extra arguments, each checked
against optax's own numbers."""

from __future__ import annotations

import inspect
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

P = inspect.Parameter
_POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)


def _is_state_class(value) -> bool:
    return inspect.isclass(value) and issubclass(value, tuple) and hasattr(value, "_fields")


def _shared_callables():
    """(name, gradxform's, optax's) for every public gradxform callable optax also has."""
    out = []
    for name in gx.__all__:
        ours, theirs = getattr(gx, name), getattr(optax, name, None)
        if theirs is None or not callable(ours) or _is_state_class(ours) \
                or _is_state_class(theirs):
            continue  # states and optax's NamedTuple types are constructed by the libraries
        try:
            inspect.signature(theirs)
        except (TypeError, ValueError):
            continue  # a type alias such as optax.Schedule: no signature to call
        out.append((name, ours, theirs))
    return out


def _signature_problem(ours, theirs) -> str | None:
    """Why a call written for `theirs` would not bind the same way to `ours`, or None.

    optax's positional parameters must be ours, in order, with the same names and kinds; no
    further positional parameter may follow; optax's keyword-only ones must be keyword-only here
    (gradxform may add keyword-only extras). A `*args` matches a `*args` of any name.
    """
    a = list(inspect.signature(ours).parameters.values())
    b = list(inspect.signature(theirs).parameters.values())
    a_pos = [p for p in a if p.kind in _POSITIONAL or p.kind is P.VAR_POSITIONAL]
    b_pos = [p for p in b if p.kind in _POSITIONAL or p.kind is P.VAR_POSITIONAL]
    if [(p.kind, p.name if p.kind is not P.VAR_POSITIONAL else "*")
            for p in a_pos] != [(p.kind, p.name if p.kind is not P.VAR_POSITIONAL else "*")
                                for p in b_pos]:
        return f"positional {[p.name for p in a_pos]} vs optax's {[p.name for p in b_pos]}"
    a_kw = {p.name for p in a if p.kind is P.KEYWORD_ONLY}
    missing = [p.name for p in b if p.kind is P.KEYWORD_ONLY and p.name not in a_kw]
    if missing:
        return f"optax's keyword-only {missing} are not keyword-only here"
    return None


def test_there_are_shared_callables_to_compare():
    names = {name for name, _, _ in _shared_callables()}
    assert {"adam", "sgd", "lion", "scale_by_adam", "masked", "MultiSteps",
            "inject_hyperparams", "multi_transform", "scale_by_schedule"} <= names


@pytest.mark.parametrize("name", [name for name, _, _ in _shared_callables()])
def test_signature_accepts_the_calls_written_for_optax(name):
    problem = _signature_problem(getattr(gx, name), getattr(optax, name))
    assert problem is None, f"{name}: {problem}"


def test_the_signature_check_can_fail():
    def theirs(learning_rate, b1=0.9, *, nesterov=False):
        pass

    def keyword_only_b1(learning_rate, *, b1=0.9, nesterov=False):
        pass

    def positional_nesterov(learning_rate, b1=0.9, nesterov=False):
        pass

    def extra_keyword(learning_rate, b1=0.9, *, nesterov=False, weight_decay=None):
        pass

    assert _signature_problem(keyword_only_b1, theirs) is not None
    assert _signature_problem(positional_nesterov, theirs) is not None
    assert _signature_problem(extra_keyword, theirs) is None


@pytest.mark.parametrize("name", [n for n in gx.__all__ if _is_state_class(getattr(gx, n))
                                  and _is_state_class(getattr(optax, n, None))])
def test_states_have_the_fields_optax_code_reads(name):
    ours, theirs = getattr(gx, name), getattr(optax, name)
    missing = [f for f in theirs._fields if not hasattr(ours, f)]
    assert not missing, f"{name} lacks optax's fields {missing}"


# -- positional arguments give optax's numbers -------------------------------------------------


def test_positional_arguments_give_optax_numbers(x64, mixed_params, noisy_gradients, trajectories):
    params = mixed_params("float64")
    grads = noisy_gradients(params)
    pairs = [
        (gx.adam(1e-3, 0.9, 0.99), optax.adam(1e-3, 0.9, 0.99)),
        (gx.sgd(0.1, 0.9, True), optax.sgd(0.1, 0.9, True)),
        (gx.lion(1e-4, 0.9, 0.99), optax.lion(1e-4, 0.9, 0.99)),
        (gx.adamw(1e-3, 0.8, 0.95, 1e-6, 0.0, None, 1e-2), optax.adamw(1e-3, 0.8, 0.95, 1e-6,
                                                                        0.0, None, 1e-2)),
        (gx.rmsprop(1e-2, 0.8, 1e-6, 0.0, True, True, 0.9),
         optax.rmsprop(1e-2, 0.8, 1e-6, 0.0, True, True, 0.9)),
        (gx.amsgrad(1e-2, 0.9, 0.99, 1e-8, 0.0, None, False, False),
         optax.amsgrad(1e-2, 0.9, 0.99, 1e-8, 0.0, None, False, False)),
        (gx.nadam(1e-2, nesterov=False), optax.nadam(1e-2, nesterov=False)),
        (gx.chain(gx.scale_by_lion(0.9, 0.99, mode="smooth", smooth_beta=2.0), gx.scale(-1e-2)),
         optax.chain(optax.scale_by_lion(0.9, 0.99, mode="smooth", smooth_beta=2.0),
                     optax.scale(-1e-2))),
        (gx.chain(gx.scale_by_lion(mode="refined"), gx.scale(-1e-2)),
         optax.chain(optax.scale_by_lion(mode="refined"), optax.scale(-1e-2))),
        (gx.chain(gx.trace(1.0), gx.scale(-1e-3)), optax.chain(optax.trace(1.0),
                                                               optax.scale(-1e-3))),
    ]
    runs = trajectories.run([trajectories.stepper(opt, params, grads)
                             for pair in pairs for opt in pair], steps=30)
    for i in range(len(pairs)):
        ours, theirs = runs[2 * i][0], runs[2 * i + 1][0]
        trajectories.assert_close(ours, theirs, "float64", f"pair {i}")
        assert float(jnp.max(jnp.abs(ours["dense"]["w"][-1] - params["dense"]["w"]))) > 1e-3


def test_amsgrad_bias_correction_flags_change_the_numbers():
    params = {"w": jnp.asarray([0.3, -1.2, 2.0])}
    grads = {"w": jnp.asarray([0.5, 0.1, -0.7])}
    first = [gx.amsgrad(1e-2, bias_correction_mu=m, bias_correction_nu=n).update(
        grads, gx.amsgrad(1e-2).init(params), params)[0]["w"]
        for m, n in [(True, True), (False, True), (True, False)]]
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], first[2])


def test_nadam_refuses_momentum_decay_without_nesterov():
    with pytest.raises(ValueError, match="nadam: momentum_decay .* nesterov=False"):
        gx.nadam(1e-3, momentum_decay=4e-3, nesterov=False)


# -- optax's names -------------------------------------------------------------------------------


def test_inject_hyperparams_matches_optax_and_setting_a_value_changes_the_next_step(
        x64, mixed_params, noisy_gradients):
    params = mixed_params("float64")
    grads = noisy_gradients(params)
    schedule = optax.linear_schedule(1e-8, 1e-2, 10)
    ours = gx.inject_hyperparams(gx.adam)(learning_rate=1e-2, eps=schedule)
    theirs = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2, eps=schedule)
    traces = []

    def make_step(opt):
        @jax.jit
        def step(s, p, t):
            traces.append(opt is ours)
            u, s = opt.update(grads(p, t), s, p)
            return optax.apply_updates(p, u), s

        return step

    def run(opt, steps=6, change_at=3):
        p, s, step = params, opt.init(params), make_step(opt)
        for t in range(steps):
            if t == change_at:
                s.hyperparams["learning_rate"] = 5e-2    # as optax code sets it between steps
            p, s = step(s, p, t)
        return p, s

    (p_ours, s_ours), (p_theirs, s_theirs) = run(ours), run(theirs)
    assert sorted(s_ours.hyperparams) == sorted(s_theirs.hyperparams)
    assert float(s_ours.hyperparams["learning_rate"]) == pytest.approx(5e-2)
    assert float(s_ours.hyperparams["eps"]) == pytest.approx(float(schedule(5)))
    for x, y in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_theirs), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13)
    assert sum(traces) == 1, "setting a hyperparameter in the state recompiled the step"
    # The same run without the change differs: the value set in the state was used.
    p_fixed, _ = run(ours, change_at=None)
    assert not np.allclose(p_fixed["dense"]["w"], p_ours["dense"]["w"])


def test_inject_hyperparams_wraps_optax_factories_and_checks_static_args(x64, mixed_params):
    params = mixed_params("float64")
    opt = gx.inject_hyperparams(optax.adamw)(1e-2, mask=lambda p: jax.tree.map(
        lambda x: x.ndim > 1, p))
    ref = optax.inject_hyperparams(optax.adamw)(1e-2, mask=lambda p: jax.tree.map(
        lambda x: x.ndim > 1, p))
    grads = jax.tree.map(lambda p: p - 0.5, params)
    ours, _ = opt.update(grads, opt.init(params), params)
    theirs, _ = ref.update(grads, ref.init(params), params)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-13)
    assert repr(gx.inject_hyperparams(gx.sgd)(0.1)).startswith("inject_hyperparams(sgd)(")
    with pytest.raises(ValueError, match=r"static_args must name parameters of inner_factory"):
        gx.inject_hyperparams(gx.adam, static_args="mask")


def test_multi_transform_and_scale_by_schedule_match_optax(x64, mixed_params, noisy_gradients,
                                                          trajectories):
    params = mixed_params("float64")
    grads = noisy_gradients(params)
    labels = {"dense": "a", "head": "b", "scale": "b", "frozen": "b"}
    schedule = optax.exponential_decay(0.1, 10, 0.5)
    steppers = [trajectories.stepper(opt, params, grads) for opt in [
        gx.multi_transform({"a": gx.adam(1e-2), "b": gx.sgd(0.1, 0.9)}, labels),
        optax.multi_transform({"a": optax.adam(1e-2), "b": optax.sgd(0.1, 0.9)}, labels),
        gx.chain(gx.scale_by_schedule(schedule), gx.scale(-1.0)),
        optax.chain(optax.scale_by_schedule(schedule), optax.scale(-1.0)),
    ]]
    ours_mt, theirs_mt, ours_s, theirs_s = trajectories.run(steppers, steps=30)
    trajectories.assert_close(ours_mt[0], theirs_mt[0], "float64")
    trajectories.assert_close(ours_s[0], theirs_s[0], "float64")


def test_optax_types_unpacking_and_gradient_transformation():
    opt = gx.adam(1e-3)
    assert isinstance(opt, gx.GradientTransformation)
    assert isinstance(opt, gx.GradientTransformationExtraArgs)
    assert isinstance(optax.adam(1e-3), gx.GradientTransformation)
    assert isinstance(optax.adam(1e-3), gx.GradientTransformationExtraArgs)
    assert not isinstance(optax.scale(2.0), gx.GradientTransformationExtraArgs)
    assert not isinstance(gx.adam, gx.GradientTransformation)
    assert not isinstance(3.0, gx.GradientTransformation)
    assert issubclass(gx.chain, gx.GradientTransformation)

    def annotated(tx: gx.GradientTransformation) -> gx.GradientTransformation:
        return tx

    assert typing.get_type_hints(annotated)["tx"] is gx.GradientTransformation
    init_fn, update_fn = gx.sgd(0.1)
    params = {"w": jnp.ones(3)}
    updates, _ = update_fn(params, init_fn(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * np.ones(3))
    multi = gx.MultiSteps(gx.sgd(0.1), 2)
    assert multi.gradient_transformation() is multi


# -- optax transformations inside gradxform wrappers ---------------------------------------------


def test_wrappers_around_optax_transformations_give_optax_numbers(x64, mixed_params,
                                                                 noisy_gradients, trajectories):
    params = mixed_params("float64")
    grads = noisy_gradients(params, nan_steps=(5, 6, 20))
    mask = {"dense": {"w": True, "b": False}, "head": True, "scale": False, "frozen": False}
    pairs = [
        # optax accumulates in float32 unless told otherwise; gradxform in the params' dtype
        (gx.MultiSteps(optax.lamb(1e-3), 2),
         optax.MultiSteps(optax.lamb(1e-3), 2, accumulator_dtype=jnp.float64)),
        (gx.apply_if_finite(optax.adam(1e-3), 3), optax.apply_if_finite(optax.adam(1e-3), 3)),
        (gx.masked(optax.adam(1e-3), mask), optax.masked(optax.adam(1e-3), mask)),
        (gx.chain(optax.clip_by_global_norm(1.0), gx.adam(1e-3)),
         optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))),
    ]
    runs = trajectories.run([trajectories.stepper(opt, params, grads)
                             for pair in pairs for opt in pair], steps=30)
    for i in range(len(pairs)):
        ours, theirs = runs[2 * i][0], runs[2 * i + 1][0]
        # NaN gradients reach masked leaves that pass through unchanged, in both libraries.
        for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-13, err_msg=f"pair {i}")
    # The optax transformation is static data: the wrapper goes through jit as an argument.
    opt = gx.MultiSteps(optax.lamb(1e-3), 2)
    assert jax.tree.leaves(opt) == [2]
    clean = jax.tree.map(lambda p: p - 0.5, params)
    jax.jit(lambda o, g, s: o.update(g, s, g))(opt, clean, opt.init(params))


# -- masks as arrays, extra arguments -------------------------------------------------------------


def test_masks_accept_concrete_boolean_arrays_and_refuse_traced_ones(x64, mixed_params):
    params = mixed_params("float64")
    grads = jax.tree.map(lambda p: p - 0.5, params)
    as_bools = {"dense": {"w": True, "b": False}, "head": True, "scale": False, "frozen": False}
    as_arrays = jax.tree.map(jnp.asarray, as_bools)
    for build in (lambda m: gx.masked(gx.adam(1e-2), m),
                  lambda m: gx.adamw(1e-2, weight_decay=0.1, mask=m),
                  lambda m: gx.masked(gx.adam(1e-2), lambda p: m)):
        a, b = build(as_bools), build(as_arrays)
        ua, _ = a.update(grads, a.init(params), params)
        ub, _ = b.update(grads, b.init(params), params)
        for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub), strict=True):
            np.testing.assert_array_equal(x, y)
    theirs = optax.masked(optax.adam(1e-2), as_arrays)
    ours = gx.masked(gx.adam(1e-2), as_arrays)
    np.testing.assert_allclose(ours.update(grads, ours.init(params), params)[0]["dense"]["w"],
                               theirs.update(grads, theirs.init(params), params)[0]["dense"]["w"],
                               rtol=1e-12)
    traced = gx.masked(gx.adam(1e-2), lambda p: jax.tree.map(lambda x: jnp.all(x > 0), p))
    with pytest.raises(TypeError, match=r"masked: the mask has a traced value at 'dense/b'"):
        jax.jit(traced.init)(params)


def test_extra_arguments_reach_only_the_transformations_that_take_them(x64, mixed_params):
    params = mixed_params("float64")

    def scale_by_value(updates, state, params=None, *, value, **extra):
        return jax.tree.map(lambda g: value * g, updates), state

    takes_value = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(),
                                                         scale_by_value)
    opt = gx.chain(optax.scale(3.0), takes_value, gx.scale(-1.0),
                   gx.masked(optax.scale(2.0), {"dense": True, "head": False, "scale": True,
                                                "frozen": False}))
    ref = optax.chain(optax.scale(3.0), takes_value, optax.scale(-1.0),
                      optax.masked(optax.scale(2.0), {"dense": True, "head": False,
                                                      "scale": True, "frozen": False}))
    ours, _ = opt.update(params, opt.init(params), params, value=0.5, loss=1.0)
    theirs, _ = ref.update(params, ref.init(params), params, value=0.5, loss=1.0)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-13)
    np.testing.assert_allclose(ours["head"]["w"], -1.5 * params["head"]["w"], rtol=1e-7)


def test_mask_compatible_extra_args_restrict_trees_like_the_updates(x64, mixed_params):
    params = mixed_params("float64")
    mask = {"dense": True, "head": False, "scale": True, "frozen": False}

    def add_tags(updates, state, params=None, *, tags, **extra):
        return jax.tree.map(lambda g, t: g + t, updates, tags), state

    inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), add_tags)
    tags = jax.tree.map(lambda p: jnp.ones_like(p), params)
    ours = gx.masked(inner, mask, mask_compatible_extra_args=True)
    theirs = optax.masked(inner, mask, mask_compatible_extra_args=True)
    a, _ = ours.update(params, ours.init(params), params, tags=tags)
    b, _ = theirs.update(params, theirs.init(params), params, tags=tags)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-13)
    groups = gx.partition({"x": inner, "y": gx.identity()},
                          {"dense": "x", "head": "y", "scale": "y", "frozen": "y"},
                          mask_compatible_extra_args=True)
    c, _ = groups.update(params, groups.init(params), params, tags=tags)
    np.testing.assert_allclose(c["dense"]["w"], params["dense"]["w"] + 1, rtol=1e-7)
    np.testing.assert_allclose(c["head"]["w"], params["head"]["w"], rtol=1e-7)


def test_the_readme_snippet_runs():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Coming from optax", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert float(namespace["state"].hyperparams["learning_rate"]) == pytest.approx(1e-4)
