"""Same names, same arguments, same numbers as optax: 100 steps on a multi-leaf tree.

Both optimizers run inside one jitted `lax.scan` with the hyperparameters closed over as Python
constants, exactly as optax uses them, so float32 agrees to a few ulps per step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

STEPS = 100

# name -> (gradxform factory, optax factory); the same arguments on both sides.
PAIRS = {
    "scale": (lambda: gx.scale(-0.1), lambda: optax.scale(-0.1)),
    "scale_by_learning_rate": (
        lambda: gx.scale_by_learning_rate(0.05), lambda: optax.scale_by_learning_rate(0.05)),
    "scale_by_sign": (lambda: gx.scale_by_sign(), lambda: optax.scale_by_sign()),
    "add_decayed_weights": (
        lambda: gx.add_decayed_weights(0.1), lambda: optax.add_decayed_weights(0.1)),
    "add_decayed_weights_masked": (
        lambda: gx.add_decayed_weights(0.1, mask={"w": True, "b": False, "c": True, "n": True}),
        lambda: optax.add_decayed_weights(0.1, mask={"w": True, "b": False, "c": True,
                                                      "n": True})),
    "ema": (lambda: gx.ema(0.9), lambda: optax.ema(0.9)),
    "ema_biased": (lambda: gx.ema(0.8, debias=False), lambda: optax.ema(0.8, debias=False)),
    "trace": (lambda: gx.trace(0.9), lambda: optax.trace(0.9)),
    "trace_nesterov": (
        lambda: gx.trace(0.9, nesterov=True), lambda: optax.trace(0.9, nesterov=True)),
    "scale_by_rss": (lambda: gx.scale_by_rss(), lambda: optax.scale_by_rss()),
    "scale_by_rms": (lambda: gx.scale_by_rms(), lambda: optax.scale_by_rms()),
    "scale_by_rms_torch_eps": (
        lambda: gx.scale_by_rms(0.99, eps_in_sqrt=False, bias_correction=True),
        lambda: optax.scale_by_rms(0.99, eps_in_sqrt=False, bias_correction=True)),
    "scale_by_stddev": (lambda: gx.scale_by_stddev(), lambda: optax.scale_by_stddev()),
    "scale_by_adam": (lambda: gx.scale_by_adam(), lambda: optax.scale_by_adam()),
    "scale_by_adam_eps_root": (
        lambda: gx.scale_by_adam(0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
        lambda: optax.scale_by_adam(0.8, 0.99, 1e-6, 1e-8)),
    "scale_by_amsgrad": (lambda: gx.scale_by_amsgrad(), lambda: optax.scale_by_amsgrad()),
    "scale_by_adamax": (lambda: gx.scale_by_adamax(), lambda: optax.scale_by_adamax()),
    "scale_by_radam": (lambda: gx.scale_by_radam(), lambda: optax.scale_by_radam()),
    "scale_by_lion": (lambda: gx.scale_by_lion(), lambda: optax.scale_by_lion()),
    "sgd": (lambda: gx.sgd(0.05), lambda: optax.sgd(0.05)),
    "sgd_momentum": (lambda: gx.sgd(0.05, 0.9), lambda: optax.sgd(0.05, 0.9)),
    "sgd_nesterov": (
        lambda: gx.sgd(0.05, 0.9, nesterov=True), lambda: optax.sgd(0.05, 0.9, nesterov=True)),
    "adagrad": (lambda: gx.adagrad(0.1), lambda: optax.adagrad(0.1)),
    "rmsprop": (lambda: gx.rmsprop(0.01), lambda: optax.rmsprop(0.01)),
    "rmsprop_centered_momentum": (
        lambda: gx.rmsprop(0.01, centered=True, momentum=0.9, nesterov=True),
        lambda: optax.rmsprop(0.01, centered=True, momentum=0.9, nesterov=True)),
    "adam": (lambda: gx.adam(0.01), lambda: optax.adam(0.01)),
    "adamw": (lambda: gx.adamw(0.01, weight_decay=0.05),
              lambda: optax.adamw(0.01, weight_decay=0.05)),
    "nadam": (lambda: gx.nadam(0.01), lambda: optax.nadam(0.01)),
    "amsgrad": (lambda: gx.amsgrad(0.01), lambda: optax.amsgrad(0.01)),
    "adamax": (lambda: gx.adamax(0.01), lambda: optax.adamax(0.01)),
    "radam": (lambda: gx.radam(0.01), lambda: optax.radam(0.01)),
    "radam_nesterov": (
        lambda: gx.radam(0.01, nesterov=True), lambda: optax.radam(0.01, nesterov=True)),
    "lion": (lambda: gx.lion(1e-3), lambda: optax.lion(1e-3)),
}


def _params(dtype):
    rng = np.random.RandomState(0)
    return {
        "w": jnp.asarray(rng.randn(4, 3), dtype),
        "b": jnp.asarray(rng.randn(3), dtype),
        "c": jnp.asarray(rng.randn(), dtype),
        "n": None,
    }


def _loss(p):
    """A smooth non-quadratic loss, so gradients depend on the trajectory."""
    return (jnp.sum(jnp.sin(3.0 * p["w"]) * p["w"]) + jnp.sum((p["b"] - 0.5) ** 4)
            + jnp.cos(p["c"]) * jnp.sum(p["w"] ** 2) / 10)


PRESETS = {"sgd", "sgd_momentum", "sgd_nesterov", "adagrad", "rmsprop", "rmsprop_centered_momentum",
           "adam", "adamw", "nadam", "amsgrad", "adamax", "radam", "radam_nesterov", "lion"}


@pytest.fixture
def run_pair(trajectories):
    """`run_pair(name, dtype, library, pairs=PAIRS)`: the params before each of STEPS steps of
    gradxform's or optax's side of pairs[name] on `_loss`."""
    def run(name, dtype, library, pairs=PAIRS):
        make_gx, make_optax = pairs[name]
        if name not in PRESETS:  # a direction alone: take small descent steps along it
            make_gx = (lambda f: lambda: gx.chain(f(), gx.scale(-0.01)))(make_gx)
            make_optax = (lambda f: lambda: optax.chain(f(), optax.scale(-0.01)))(make_optax)
        make, apply = ((make_gx, gx.apply_updates) if library == "gradxform"
                       else (make_optax, optax.apply_updates))
        return jax.jit(lambda p: trajectories.on_loss(make(), apply, p, _loss, STEPS))(
            _params(dtype))

    return run


def _max_rel_err(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
                            / (np.abs(np.asarray(y, np.float64)) + 1e-6)))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _assert_close(ours, ref, rtol, atol, name):
    for path, a in jax.tree_util.tree_leaves_with_path(ours):
        np.testing.assert_allclose(a, ref[path[0].key], rtol=rtol, atol=atol,
                                   err_msg=f"{name} {path}")


# Bias corrections 1 - β^t and RAdam's ρ_t = ρ_∞ - 2tβ2^t/(1 - β2^t) cancel catastrophically in
# float32 when β is near 1 (0.999 is stored as 0.99900001; ρ_t is a difference of two numbers
# near 2000). optax forms them directly and loses up to ~1e-5 of Adam's step and ~1% of RAdam's
# rectifier at the first steps; gradxform rearranges them without cancellation (as torch, which
# works in double, effectively does). For these, gradxform float32 must be within the float32
# tolerance of the exact (float64) trajectory and closer to it than optax float32 is.
MORE_ACCURATE_THAN_OPTAX_FLOAT32 = {
    "adam", "adamw", "amsgrad", "nadam", "radam", "radam_nesterov",
    "scale_by_adam", "scale_by_amsgrad", "scale_by_radam",
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_numbers_as_optax(name, run_pair):
    with jax.enable_x64(True):
        ours64 = run_pair(name, jnp.float64, "gradxform")
        theirs64 = run_pair(name, jnp.float64, "optax")
        moved = max(float(jnp.max(jnp.abs(a[-1] - a[0]))) for a in jax.tree.leaves(ours64))
        bounded = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(ours64))
        assert moved > 1e-3 and bounded < 100, f"{name}: not a meaningful trajectory"
        assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(ours64))
        _assert_close(ours64, theirs64, 1e-12, 1e-13, name)
    ours32 = run_pair(name, jnp.float32, "gradxform")
    theirs32 = run_pair(name, jnp.float32, "optax")
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(ours32))
    # float32: a few ulps per step, accumulated over 100 steps.
    if name in MORE_ACCURATE_THAN_OPTAX_FLOAT32:
        _assert_close(ours32, theirs64, 2e-5, 2e-6, f"{name} (float32 vs exact)")
        assert _max_rel_err(ours32, theirs64) < _max_rel_err(theirs32, theirs64)
    else:
        _assert_close(ours32, theirs32, 2e-5, 2e-6, f"{name} (float32 vs optax float32)")


bf16 = jnp.bfloat16
# Moments stored in bfloat16, a storage format: gradxform updates a moment in the wider precision
# of the gradient and the moment, steps with that moment and rounds it once, when storing it.
# optax forms β·m in bfloat16 (a Python float times a bfloat16 array stays bfloat16) before
# adding the float32 (1 - β)·g, so it rounds twice per step; its trajectory is further from the
# one with float32 moments. The numpy re-derivations below pin gradxform's rule exactly.
LOW_PRECISION_PAIRS = {
    "adam": (lambda: gx.adam(0.01, mu_dtype=bf16), lambda: optax.adam(0.01, mu_dtype=bf16)),
    "adamw": (lambda: gx.adamw(0.01, weight_decay=0.05, mu_dtype=bf16),
              lambda: optax.adamw(0.01, weight_decay=0.05, mu_dtype=bf16)),
    "nadam": (lambda: gx.nadam(0.01, mu_dtype=bf16), lambda: optax.nadam(0.01, mu_dtype=bf16)),
    "amsgrad": (lambda: gx.amsgrad(0.01, mu_dtype=bf16),
                lambda: optax.amsgrad(0.01, mu_dtype=bf16)),
    "lion": (lambda: gx.lion(1e-3, mu_dtype=bf16), lambda: optax.lion(1e-3, mu_dtype=bf16)),
    "sgd_momentum": (lambda: gx.sgd(0.05, 0.9, accumulator_dtype=bf16),
                     lambda: optax.sgd(0.05, 0.9, accumulator_dtype=bf16)),
    "sgd_nesterov": (lambda: gx.sgd(0.05, 0.9, nesterov=True, accumulator_dtype=bf16),
                     lambda: optax.sgd(0.05, 0.9, nesterov=True, accumulator_dtype=bf16)),
    "ema": (lambda: gx.ema(0.9, accumulator_dtype=bf16),
            lambda: optax.ema(0.9, accumulator_dtype=bf16)),
}


def _rms_err(a, b):
    """‖a - b‖ / ‖b‖ over whole trajectories (every step and leaf)."""
    a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(b)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", sorted(LOW_PRECISION_PAIRS))
def test_bfloat16_moments_are_closer_to_float32_moments_than_optax(name, run_pair):
    make_gx, _ = LOW_PRECISION_PAIRS[name]
    state = make_gx().init(_params(jnp.float32))
    stored = [x for x in jax.tree.leaves(state) if jnp.ndim(x) > 0][0]
    assert stored.dtype == bf16
    ours = run_pair(name, jnp.float32, "gradxform", LOW_PRECISION_PAIRS)
    theirs = run_pair(name, jnp.float32, "optax", LOW_PRECISION_PAIRS)
    with jax.enable_x64(True):
        wide = run_pair(name, jnp.float64, "gradxform")  # the same optimizer, f64 moments
    assert _rms_err(ours, wide) < _rms_err(theirs, wide)
    assert _rms_err(ours, wide) > 1e-5  # the bfloat16 state does change the numbers


def _numpy_trajectory(step, params):
    """`step(t, p, g, state) -> p, state` in numpy float64, gradients of `_loss` from jax."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items() if v is not None}
    grad = jax.jit(jax.grad(_loss))
    state, out = None, []
    for t in range(1, STEPS + 1):
        out.append(p)
        g = {k: np.asarray(v, np.float64) for k, v in grad(p).items()}
        p, state = step(t, p, g, state)
    return {k: np.stack([q[k] for q in out]) for k in p}


def _bf16(x):
    return np.asarray(x, np.float64).astype(jnp.bfloat16).astype(np.float64)


def _adam_bf16_mu(t, p, g, m, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    m, v = m or ({k: 0 * x for k, x in p.items()}, {k: 0 * x for k, x in p.items()})
    mt = {k: b1 * m[k] + (1 - b1) * g[k] for k in p}  # from the stored bf16 m, in float64
    vt = {k: b2 * v[k] + (1 - b2) * g[k] ** 2 for k in p}
    p = {k: p[k] - lr * (mt[k] / (1 - b1**t)) / (np.sqrt(vt[k] / (1 - b2**t)) + eps) for k in p}
    return p, ({k: _bf16(x) for k, x in mt.items()}, vt)  # m stored once rounded


def _sgd_bf16_trace(t, p, g, v, lr=0.05, mu=0.9):
    v = v or {k: 0 * x for k, x in p.items()}
    vt = {k: mu * v[k] + g[k] for k in p}
    return {k: p[k] - lr * vt[k] for k in p}, {k: _bf16(x) for k, x in vt.items()}


def _lion_bf16_mu(t, p, g, m, lr=1e-3, b1=0.9, b2=0.99, wd=1e-3):
    m = m or {k: 0 * x for k, x in p.items()}
    u = {k: np.sign(b1 * m[k] + (1 - b1) * g[k]) + wd * p[k] for k in p}
    return ({k: p[k] - lr * u[k] for k in p},
            {k: _bf16(b2 * m[k] + (1 - b2) * g[k]) for k in p})


@pytest.mark.parametrize("name, numpy_step", [("adam", _adam_bf16_mu),
                                              ("sgd_momentum", _sgd_bf16_trace),
                                              ("lion", _lion_bf16_mu)])
def test_bfloat16_moments_are_rounded_once_when_stored(name, numpy_step, run_pair):
    with jax.enable_x64(True):
        ours = run_pair(name, jnp.float64, "gradxform", LOW_PRECISION_PAIRS)
        ref = _numpy_trajectory(numpy_step, _params(jnp.float64))
        _assert_close(ours, ref, 1e-12, 1e-13, name)


FOUNDATION_MODULES = {f"gradxform._src.{m}" for m in
                      ("presets.alias", "primitives.scaling", "primitives.moments",
                       "primitives.adaptive", "primitives.adam_family",
                       "primitives.sign_momentum")}
# Presets of presets/alias.py compared with optax in their own test files.
COMPARED_ELSEWHERE = {"adafactor": "test_factored.py", "adabelief": "test_adam_variants.py",
                      "yogi": "test_adam_variants.py", "adan": "test_adam_variants.py",
                      "sign_sgd": "test_sign_momentum.py", "signum": "test_sign_momentum.py",
                      "nadamw": "test_adam_family.py", "adamaxw": "test_adam_family.py",
                      "noisy_sgd": "test_noise.py",
                      "optimistic_gradient_descent": "test_optimistic.py",
                      "optimistic_adam": "test_optimistic.py",
                      "optimistic_adam_v2": "test_optimistic.py", "novograd": "test_layerwise.py",
                      "lamb": "test_trust_ratio.py", "lars": "test_trust_ratio.py",
                      "fromage": "test_trust_ratio.py", "sm3": "test_cover_statistics.py",
                      "polyak_sgd": "test_polyak.py", "lbfgs": "test_lbfgs.py"}


def test_pairs_cover_every_optax_name():
    """Every transformation and optimizer of these modules that optax also has is compared above.

    (Schedules, clipping and combinators are compared with optax in their own test files.)
    """
    exported = {
        n for n in gx.__all__
        if n.islower() and hasattr(optax, n)
        and getattr(getattr(gx, n), "__module__", None) in FOUNDATION_MODULES
    }
    assert {"adam", "scale_by_adam", "trace", "scale_by_lion"} <= exported, (
        "FOUNDATION_MODULES no longer names the modules that define these")
    not_transformations = {"identity", "set_to_zero", "bias_correction"}
    missing = exported - set(PAIRS) - not_transformations - set(COMPARED_ELSEWHERE)
    assert not missing, f"compare these with optax: {sorted(missing)}"
