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


def _trajectory(opt, apply, params):
    def body(carry, _):
        p, s = carry
        g = jax.grad(_loss)(p)
        u, s = opt.update(g, s, p)
        return (apply(p, u), s), jax.tree.map(lambda x: x, p)

    (_, _), ps = jax.lax.scan(body, (params, opt.init(params)), None, length=STEPS)
    return ps


def _trajectories(name, dtype, library):
    make_gx, make_optax = PAIRS[name]
    if name not in PRESETS:  # a direction alone: take small descent steps along it
        make_gx = (lambda f: lambda: gx.chain(f(), gx.scale(-0.01)))(make_gx)
        make_optax = (lambda f: lambda: optax.chain(f(), optax.scale(-0.01)))(make_optax)
    params = _params(dtype)
    if library == "gradxform":
        return jax.jit(lambda p: _trajectory(make_gx(), gx.apply_updates, p))(params)
    return jax.jit(lambda p: _trajectory(make_optax(), optax.apply_updates, p))(params)


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
def test_same_numbers_as_optax(name):
    with jax.enable_x64(True):
        ours64 = _trajectories(name, jnp.float64, "gradxform")
        theirs64 = _trajectories(name, jnp.float64, "optax")
        moved = max(float(jnp.max(jnp.abs(a[-1] - a[0]))) for a in jax.tree.leaves(ours64))
        bounded = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(ours64))
        assert moved > 1e-3 and bounded < 100, f"{name}: not a meaningful trajectory"
        assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(ours64))
        _assert_close(ours64, theirs64, 1e-12, 1e-13, name)
    ours32 = _trajectories(name, jnp.float32, "gradxform")
    theirs32 = _trajectories(name, jnp.float32, "optax")
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(ours32))
    # float32: a few ulps per step, accumulated over 100 steps.
    if name in MORE_ACCURATE_THAN_OPTAX_FLOAT32:
        _assert_close(ours32, theirs64, 2e-5, 2e-6, f"{name} (float32 vs exact)")
        assert _max_rel_err(ours32, theirs64) < _max_rel_err(theirs32, theirs64)
    else:
        _assert_close(ours32, theirs32, 2e-5, 2e-6, f"{name} (float32 vs optax float32)")


FOUNDATION_MODULES = {f"gradxform.{m}" for m in
                      ("alias", "scaling", "momentum", "adaptive", "adam", "lion")}


def test_pairs_cover_every_optax_name():
    """Every transformation and optimizer of these modules that optax also has is compared above.

    (Schedules, clipping and combinators are compared with optax in their own test files.)
    """
    exported = {
        n for n in gx.__all__
        if n.islower() and hasattr(optax, n) and getattr(gx, n).__module__ in FOUNDATION_MODULES
    }
    not_transformations = {"identity", "set_to_zero", "bias_correction"}
    missing = exported - set(PAIRS) - not_transformations
    assert not missing, f"compare these with optax: {sorted(missing)}"
