"""gradxform.contrib against optax.contrib: the same names, signatures and trajectories.

Each optimizer follows 100 steps of a non-quadratic loss on a tree of a matrix, a vector and a
3-D leaf, beside optax's namesake with the same arguments: float64 to 1e-12, and float32 held
to the float64 trajectory within a few ulps per step.
"""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from conftest import Trajectories

import gradxform as gx

STEPS = 100


def _loss(p):
    return (jnp.sum(jnp.sin(3.0 * p["w"]) * p["w"]) + jnp.sum((p["b"] - 0.5) ** 4)
            + jnp.sum(jnp.cos(p["k"]) * p["k"]) + jnp.mean(p["k"]) * jnp.sum(p["w"] ** 2) / 10)


def _grads(p, t):
    return jax.grad(_loss)(p)


def _grad_np(p):
    """∇_loss in numpy, written out by hand (independent of jax.grad)."""
    w, b, k = p["w"], p["b"], p["k"]
    return {"w": np.sin(3 * w) + 3 * w * np.cos(3 * w) + np.mean(k) * w / 5,
            "b": 4 * (b - 0.5) ** 3,
            "k": np.cos(k) - k * np.sin(k) + np.sum(w**2) / 10 / k.size}


def _params(dtype):
    rng = np.random.RandomState(0)
    return {"w": jnp.asarray(rng.randn(4, 3), dtype), "b": jnp.asarray(rng.randn(3), dtype),
            "k": jnp.asarray(rng.randn(2, 3, 2), dtype)}


def _descend(direction, step=-0.01):
    return lambda lib: lib.chain(direction(lib.contrib), lib.scale(step))


def _preset(name, *args, **kwargs):
    return lambda lib: getattr(lib.contrib, name)(*args, **kwargs)


def _optax_base(lib, optax_opt):
    return gx.from_optax(optax_opt) if lib is gx else optax_opt


def _chain_prefix(prefix, make):
    """`make`'s optimizer after a transformation `prefix(lib)` (e.g. clipping, for methods that
    the gradients of an unbounded loss would otherwise send far away)."""
    return lambda lib: lib.chain(prefix(lib), make(lib))


# name -> (factory of gx or optax, float32 tolerance against the float64 trajectory[, float64
# tolerance against optax where optax computes a factor in float32 even with float64 enabled])
F32 = "float32"
# Methods whose steps grow with the accumulated gradients (a momentum without 1 - β1, a bet
# divided by the largest gradient seen, a normalisation by a tiny first gradient) carry float32
# rounding further: their float32 runs, optax's as much as these, stay within ~5e-6 of the
# float64 trajectory on leaves of size ~1.
AMPLIFIED = dict(rtol=1e-5, atol=1e-5)
# Methods with one step size for the whole tree (DoG, DoWG, Mechanic) take large steps
# across the non-convex loss: their float32 runs (optax's too) end up to 10% away from the
# float64 one; held instead to optax's float32 run, within a few ulps per step.
CHAOTIC = "same as optax's float32"
# Prodigy's estimate of the distance is a running maximum of a ratio of sums, and its float32
# runs (optax's too) drift from the float64 one by up to ~1e-4 here; optax's float32 forms the
# bias corrections 1 - β^t with cancellation and gradxform's does not, so the two float32 runs
# differ as much. Held to: no further from the float64 trajectory than twice optax's float32.
SENSITIVE = "no further from float64 than optax's float32"
# optax's scale_by_madgrad takes √t of the int32 count, which jnp.sqrt computes in float32 even
# with float64 enabled, a relative 1e-8 that the method carries on; the float64 trajectory is
# held to its numpy re-derivation to 1e-12 (test_trajectories_follow_the_papers_equations).
MADGRAD_F64 = dict(rtol=1e-6, atol=1e-8)
PAIRS = {
    # asynchronous_moments.py
    "adopt": (_preset("adopt", 0.01, 0.8, 0.99, 1e-4, nesterov=True,
                      clip_value_fn=lambda t: 1.0 + t ** 0.5), F32),
    "acprop": (_preset("acprop", 0.01, 0.8, 0.99, 1e-8, 1e-10, 0.1,
                       {"w": True, "b": False, "k": True}), F32),
    # slow_momentum.py
    "ademamix": (_preset("ademamix", 0.01, 0.8, 0.99, 0.999, 3.0, 1e-6, 1e-9, None, 0.1), F32),
    "simplified_ademamix": (_preset("simplified_ademamix", 1e-3, 0.9, 0.99, 2.0, 1e-6, 1e-9,
                                    0.1), AMPLIFIED),
    # dual_averaging.py
    "madgrad": (_preset("madgrad", 0.02, 0.8, 0.1, 1e-5), F32, MADGRAD_F64),
    # distance_over_gradients.py
    "dog": (_preset("dog"), CHAOTIC),
    "dog_learning_rate": (_preset("dog", 0.5, ("learning_rate", 0.01), 1e-6, 0.01,
                                  {"w": True, "b": False, "k": True}), AMPLIFIED),
    "dowg": (_preset("dowg", 0.5, 0.1, 1e-3, 0.01), CHAOTIC),
    # distance_estimation.py
    "prodigy": (_preset("prodigy", gx.linear_schedule(0.1, 0.3, 50), (0.8, 0.99), 0.9,
                        1e-6, 1e-3, 2.0, 0.01, True), SENSITIVE),
    "dadapt_adamw": (_preset("dadapt_adamw", 0.5, (0.8, 0.99), 1e-6, 1e-4, 0.01), AMPLIFIED),
    # polyak_momentum.py (f* = -30: below the loss along these runs; the step comes from a
    # difference of loss-sized numbers, which float32 rounds at ~1e-6)
    "momo": (_preset("momo", 0.3, 0.8, -30.0, 0.01, True), AMPLIFIED),
    "momo_adam": (_preset("momo_adam", 0.1, 0.8, 0.99, 1e-6, -30.0, 0.01, True), AMPLIFIED),
    # mechanic.py: the same base optimizer on both sides (optax's, wrapped), so that only
    # Mechanic's own numbers are compared; its bets amplify the last-bit differences of two
    # Adams (1e-16) to ~1e-9 in 100 steps.
    "mechanize": (lambda lib: lib.contrib.mechanize(
        _optax_base(lib, optax.sgd(0.05, momentum=0.9)), 0.1, 1e-6, 1e-4, 3), CHAOTIC),
    # sharpness.py (transparent mode: each update is one gradient evaluation)
    "sam": (lambda lib: lib.contrib.sam(lib.adam(0.01), lib.chain(
        lib.contrib.normalize(), lib.sgd(0.02, momentum=0.5)), 3, False), F32),
    # normalization.py
    "normalize": (_descend(lambda c: c.normalize()), F32),
    # coin_betting.py
    "cocob": (_preset("cocob", 0.5, 50.0, 1e-6, 0.01, {"w": True, "b": False, "k": True}),
              AMPLIFIED),
}


def _value_stepper(opt, params):
    """Trajectories.stepper for a method that reads the loss: update(..., value=loss)."""
    def step(carry, t):
        p, s = carry
        value, g = jax.value_and_grad(_loss)(p)
        u, s = opt.update(g, s, p, value=value)
        p = optax.apply_updates(p, u)
        return (p, s), (p, s)

    return (params, opt.init(params)), step


def _run(make, dtype, name="", libs=(gx, optax)) -> list:
    """The params at every step of each library's optimizer, in one compiled scan."""
    params = _params(dtype)
    stepper = _value_stepper if name.startswith("momo") else (
        lambda opt, p: Trajectories.stepper(opt, p, _grads))
    return [ps for ps, _ in Trajectories.run([stepper(make(lib), params) for lib in libs],
                                             STEPS)]


def _err(a, b):
    """Largest error over the trajectory, relative to the size of each leaf."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                     / np.max(np.abs(np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax(name, trajectories):
    make, tol32, *tol64 = PAIRS[name]
    with jax.enable_x64(True):
        ours64, exact = _run(make, jnp.float64, name)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(ours64))
    moved = min(float(jnp.max(jnp.abs(x[-1] - x[0]))) for x in jax.tree.leaves(ours64))
    assert moved > 1e-2, f"{name}: a leaf barely moved, the comparison says little"
    trajectories.assert_close(ours64, exact, (tol64 or [dict(rtol=1e-12, atol=1e-13)])[0], name)
    if tol32 == F32:  # close to the float64 trajectory: optax's float32 run is not needed
        ours32, = _run(make, jnp.float32, name, libs=(gx,))
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ours32))
        trajectories.assert_close(ours32, exact, tol32, f"{name} (float32 vs float64)")
        return
    ours32, optax32 = _run(make, jnp.float32, name)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ours32))
    if tol32 == SENSITIVE:
        assert _err(ours32, exact) <= 2 * _err(optax32, exact) + 2e-6, name
        return
    if tol32 == CHAOTIC:
        trajectories.assert_close(ours32, optax32, "float32", f"{name} (float32 vs optax's)")
    else:
        trajectories.assert_close(ours32, exact, tol32, f"{name} (float32 vs float64)")
    # and no further from the float64 trajectory than optax's own float32 run (within a half)
    assert _err(ours32, exact) <= 1.5 * _err(optax32, exact) + 1e-7, name


# -- the namespace ---------------------------------------------------------------------------

# Transformations optax.contrib defines in its modules without exporting them.
UNEXPORTED = {"scale_by_dog": optax.contrib._dog.scale_by_dog,
              "scale_by_dowg": optax.contrib._dog.scale_by_dowg}


def _optax_contrib(name):
    return UNEXPORTED[name] if name in UNEXPORTED else getattr(optax.contrib, name)


def test_contrib_mirrors_optax_contrib_names_and_signatures():
    for name in gx.contrib.__all__:
        assert hasattr(optax.contrib, name) or name in UNEXPORTED, (
            f"gx.contrib.{name} is not an optax.contrib name")
        ours, theirs = getattr(gx.contrib, name), _optax_contrib(name)
        if not (inspect.isfunction(ours) and inspect.isfunction(theirs)):
            continue
        if name in ("differentially_private_aggregate",):  # a class: its fields, below
            continue
        if name in ("muon", "sophia", "schedule_free_sgd", "schedule_free_adamw",
                    "schedule_free", "schedule_free_eval_params"):
            continue  # older presets: their differences are documented in their docstrings
        ps_ours = inspect.signature(ours).parameters
        ps_theirs = inspect.signature(theirs).parameters
        assert list(ps_ours) == list(ps_theirs), name
        for a, b in zip(ps_ours.values(), ps_theirs.values()):
            assert a.kind == b.kind, f"{name}: {a.name} is {a.kind}, optax's is {b.kind}"
            if isinstance(b.default, int | float | tuple | str | bool) or b.default is None:
                assert a.default == b.default, f"{name}: default of {a.name}"


@pytest.mark.parametrize("name", ["scale_by_adopt", "scale_by_acprop", "scale_by_ademamix",
                                  "scale_by_simplified_ademamix", "scale_by_madgrad",
                                  "scale_by_dog", "scale_by_dowg", "scale_by_cocob",
                                  "differentially_private_aggregate", "mechanize", "sam"])
def test_primitive_signatures_follow_optax(name):
    ours = getattr(gx.contrib, name)
    theirs = inspect.signature(_optax_contrib(name)).parameters
    fields = {f.name: f for f in ours.__dataclass_fields__.values()}
    assert list(fields) == list(theirs), name
    for f, b in zip(fields.values(), theirs.values()):
        assert f.kw_only == (b.kind is inspect.Parameter.KEYWORD_ONLY), f"{name}: {f.name}"
        if isinstance(b.default, int | float | str | bool | tuple) or b.default is None:
            assert f.default == b.default, f"{name}: default of {f.name}"


def test_names_shared_with_the_top_level_are_the_same_objects():
    shared = set(gx.contrib.__all__) & set(gx.__all__)
    assert {"muon", "sophia", "schedule_free_adamw", "scale_by_muon"} <= shared
    assert all(getattr(gx.contrib, n) is getattr(gx, n) for n in shared)


# -- construction-time validation ------------------------------------------------------------

INVALID = [
    (lambda: gx.contrib.scale_by_adopt(b1=1.0), "scale_by_adopt: b1 must be in [0, 1)"),
    (lambda: gx.contrib.adopt(1e-3, b2=-0.1), "scale_by_adopt: b2 must be in [0, 1)"),
    (lambda: gx.contrib.scale_by_adopt(eps=-1.0), "scale_by_adopt: eps must be >= 0"),
    (lambda: gx.contrib.scale_by_adopt(clip_value_fn=0.5),
     "scale_by_adopt: clip_value_fn must be a function of the step index"),
    (lambda: gx.contrib.acprop(1e-3, b1=1.5), "scale_by_acprop: b1 must be in [0, 1)"),
    (lambda: gx.contrib.scale_by_acprop(eps_root=-1e-3),
     "scale_by_acprop: eps_root must be >= 0"),
    (lambda: gx.contrib.ademamix(1e-3, b3=1.0), "scale_by_ademamix: b3 must be in [0, 1)"),
    (lambda: gx.contrib.scale_by_ademamix(alpha=-1.0), "scale_by_ademamix: alpha must be >= 0"),
    (lambda: gx.contrib.ademamix(1e-3, weight_decay=-1.0),
     "add_decayed_weights: weight_decay must be >= 0"),
    (lambda: gx.contrib.simplified_ademamix(1e-3, b2=1.0),
     "scale_by_simplified_ademamix: b2 must be in [0, 1)"),
    (lambda: gx.contrib.madgrad(-1e-3), "scale_by_madgrad: learning_rate must be >= 0"),
    (lambda: gx.contrib.madgrad(1e-3, momentum=1.0), "scale_by_madgrad: momentum must be in"),
    (lambda: gx.contrib.madgrad(float("nan")), "scale_by_madgrad: learning_rate must be finite"),
    (lambda: gx.contrib.dog(init_step=("distanse", 1.0)),
     "scale_by_dog: init_step must be a pair (kind, value) with kind in ('distance', "
     "'learning_rate', 'heuristic') and a finite value > 0, got ('distanse', 1.0)"),
    (lambda: gx.contrib.scale_by_dog(("distance", -1.0)), "scale_by_dog: init_step must be"),
    (lambda: gx.contrib.dog(eps=0.0), "scale_by_dog: eps must be > 0"),
    (lambda: gx.contrib.dog(weight_decay=-0.1), "add_decayed_weights: weight_decay must be >= 0"),
    (lambda: gx.contrib.dowg(init_estim_sq_dist=0.0),
     "scale_by_dowg: init_estim_sq_dist must be > 0"),
    (lambda: gx.contrib.dowg(eps=-1.0), "scale_by_dowg: eps must be > 0"),
    (lambda: gx.contrib.cocob(alpha=0.0), "scale_by_cocob: alpha must be > 0"),
    (lambda: gx.contrib.scale_by_cocob(eps=0.0), "scale_by_cocob: eps must be > 0"),
    (lambda: gx.contrib.prodigy(betas=(0.9, 1.0)), "prodigy: betas[1] (b2) must be in [0, 1)"),
    (lambda: gx.contrib.prodigy(beta3=1.5), "prodigy: beta3 must be in [0, 1) or None"),
    (lambda: gx.contrib.prodigy(estim_lr0=0.0), "prodigy: estim_lr0 must be > 0"),
    (lambda: gx.contrib.prodigy(estim_lr_coef=-1.0), "prodigy: estim_lr_coef must be > 0"),
    (lambda: gx.contrib.prodigy(weight_decay=-1.0), "prodigy: weight_decay must be >= 0"),
    (lambda: gx.contrib.dadapt_adamw(betas=(1.2, 0.9)),
     "dadapt_adamw: betas[0] (b1) must be in [0, 1)"),
    (lambda: gx.contrib.dadapt_adamw(betas=0.9), "dadapt_adamw: betas must be a pair (b1, b2)"),
    (lambda: gx.contrib.dadapt_adamw(-1.0), "dadapt_adamw: learning_rate must be >= 0"),
    (lambda: gx.contrib.momo(beta=1.0), "momo: beta must be in [0, 1)"),
    (lambda: gx.contrib.differentially_private_aggregate(-1.0, 1.0, 0),
     "differentially_private_aggregate: l2_norm_clip must be >= 0"),
    (lambda: gx.contrib.dpsgd(0.1, 1.0, -0.5, 0),
     "differentially_private_aggregate: noise_multiplier must be >= 0"),
    (lambda: gx.contrib.differentially_private_aggregate(1.0, 1.0, 0, seed=1),
     "differentially_private_aggregate: pass key or seed, not both"),
    (lambda: gx.contrib.mechanize(gx.adam(0.1), num_betas=0),
     "mechanize: num_betas must be an integer >= 1"),
    (lambda: gx.contrib.mechanize(gx.adam(0.1), s_init=0.0), "mechanize: s_init must be > 0"),
    (lambda: gx.contrib.mechanize(gx.adam(0.1), weight_decay=-1.0),
     "mechanize: weight_decay must be >= 0"),
    (lambda: gx.contrib.mechanize(0.1), "mechanize: base_optimizer must be a transformation"),
    (lambda: gx.contrib.sam(gx.sgd(0.1), gx.sgd(0.1), 0),
     "sam: sync_period must be an integer >= 1"),
    (lambda: gx.contrib.sam(gx.sgd(0.1), 0.1), "sam: adv_optimizer must be a transformation"),
    (lambda: gx.contrib.split_real_and_imaginary(0.1),
     "split_real_and_imaginary: inner must be a transformation"),
    (lambda: gx.contrib.momo(weight_decay=-1.0), "momo: weight_decay must be >= 0"),
    (lambda: gx.contrib.momo_adam(b2=1.0), "momo_adam: b2 must be in [0, 1)"),
    (lambda: gx.contrib.momo_adam(-0.1), "momo_adam: learning_rate must be >= 0"),
    (lambda: gx.contrib.cocob(learning_rate=-1.0),
     "scale_by_learning_rate: learning_rate must be >= 0"),
]


@pytest.mark.parametrize("make, message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_hyperparameters_fail_at_construction(make, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        make()


# -- equations re-derived in numpy -----------------------------------------------------------

def _adopt_np(g_seq, b1=0.9, b2=0.9999, eps=1e-6):
    """ADOPT's Algorithm with clipping, one array, from the paper's equations."""
    m = v = None
    out = []
    for t, g in enumerate(g_seq):
        if t == 0:
            v, m = g * g, np.zeros_like(g)
            out.append(np.zeros_like(g))
            continue
        x = np.clip(g / np.maximum(np.sqrt(v), eps), -t ** 0.25, t ** 0.25)
        m = b1 * m + (1 - b1) * x
        v = b2 * v + (1 - b2) * g * g
        out.append(m)
    return out


def _ademamix_np(g_seq, b1=0.9, b2=0.999, b3=0.9999, alpha=6.0, eps=1e-8):
    m1 = m2 = nu = 0.0
    out = []
    for t, g in enumerate(g_seq, start=1):
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b3 * m2 + (1 - b3) * g
        nu = b2 * nu + (1 - b2) * g * g
        out.append((m1 / (1 - b1**t) + alpha * m2) / (np.sqrt(nu / (1 - b2**t)) + eps))
    return out


def _madgrad_np(g_seq, x, lr=0.01, momentum=0.9, eps=1e-6):
    """MADGRAD's Algorithm 1 on a fixed gradient sequence (x moves; g does not depend on it)."""
    x0, v, s = x.copy(), 0 * x, 0 * x
    out = []
    for t, g in enumerate(g_seq, start=1):
        lamb = (lr + eps) * np.sqrt(t)
        v, s = v + lamb * g * g, s + lamb * g
        z = x0 - s / (np.cbrt(v) + eps)
        x_new = (1 - momentum) * z + momentum * x
        out.append(x_new - x)
        x = x_new
    return out


@pytest.mark.parametrize("name", ["adopt", "ademamix", "madgrad"])
def test_updates_follow_the_papers_equations(name, x64):
    rng = np.random.default_rng(0)
    g_seq = [rng.normal(size=(2, 3, 2)) for _ in range(STEPS)]
    x = rng.normal(size=(2, 3, 2))
    opt, ref = {"adopt": (gx.contrib.scale_by_adopt(), _adopt_np(g_seq)),
                "ademamix": (gx.contrib.scale_by_ademamix(), _ademamix_np(g_seq)),
                "madgrad": (gx.contrib.scale_by_madgrad(0.01), _madgrad_np(g_seq, x))}[name]
    p = jnp.asarray(x)
    state = opt.init(p)
    update = jax.jit(opt.update)
    for g, expected in zip(g_seq, ref):
        u, state = update(jnp.asarray(g), state, p)
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-12, atol=1e-14)
        p = p + u


@pytest.mark.parametrize("make", [
    lambda: gx.contrib.adopt(1e-2), lambda: gx.contrib.ademamix(1e-2),
    lambda: gx.contrib.acprop(1e-2), lambda: gx.contrib.simplified_ademamix(1e-2),
    lambda: gx.contrib.madgrad(1e-2), lambda: gx.contrib.cocob(),
    lambda: gx.chain(gx.contrib.normalize(), gx.scale(-0.1))])
def test_elementwise_chains_are_fused_whole(make):
    from gradxform._src.fast import fusion

    opt = make()
    members = [t for t, _ in fusion.flat_members(opt, opt.init({"w": jnp.zeros(3)}))]
    runs = fusion.runs(members)
    assert runs and runs[-1] == (0, len(members)), f"{opt!r} is not one elementwise run"


def _madgrad_trajectory_np(lr, momentum, weight_decay, eps):
    """θ_t of MADGRAD (Algorithm 1, decay added to the gradient) on the loss, in numpy."""
    rng = np.random.RandomState(0)  # the draws of _params
    x = {"w": rng.randn(4, 3), "b": rng.randn(3), "k": rng.randn(2, 3, 2)}
    x0 = {n: v.copy() for n, v in x.items()}
    v = {n: 0 * a for n, a in x.items()}
    s = {n: 0 * a for n, a in x.items()}
    out = []
    for t in range(1, STEPS + 1):
        g = _grad_np(x)
        lamb = (lr + eps) * np.sqrt(t)
        new = {}
        for n in x:
            gn = g[n] + weight_decay * x[n]
            v[n] = v[n] + lamb * gn * gn
            s[n] = s[n] + lamb * gn
            z = x0[n] - s[n] / (np.cbrt(v[n]) + eps)
            new[n] = (1 - momentum) * z + momentum * x[n]
        x = new
        out.append(x)
    return {n: np.stack([q[n] for q in out]) for n in x}


@pytest.mark.parametrize("name, args", [("madgrad", (0.02, 0.8, 0.1, 1e-5))])
def test_trajectories_follow_the_papers_equations(name, args):
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        (ours64, _), = Trajectories.run(
            [Trajectories.stepper(gx.contrib.madgrad(*args), params, _grads)], STEPS)
    ref = _madgrad_trajectory_np(*args)
    for n in ref:
        np.testing.assert_allclose(np.asarray(ours64[n]), ref[n], rtol=1e-12, atol=1e-13,
                                   err_msg=f"{name} {n}")


@pytest.mark.parametrize("make", [lambda: gx.contrib.momo(), lambda: gx.contrib.momo_adam()])
def test_momo_asks_for_the_loss_value(make):
    opt = make()
    params = _params(jnp.float32)
    with pytest.raises(ValueError, match="the loss value is required"):
        opt.update(params, opt.init(params), params)


def test_momo_gets_the_value_through_a_chain():
    """chain passes extra arguments to every member (combine.chain)."""
    params = {"w": jnp.asarray([0.5, -1.0, 2.0])}
    loss = lambda p: jnp.sum(p["w"] ** 2) + 1.0  # noqa: E731
    opt = gx.chain(gx.clip_by_global_norm(1.0), gx.contrib.momo(0.1))
    value, g = jax.value_and_grad(loss)(params)
    u, _ = jax.jit(opt.update)(g, opt.init(params), params, value=value)
    # the first step: m = clipped g, τ = min(α, (f - γ + ⟨m, x⟩)/‖m‖²) with γ = ⟨m, x⟩
    m = g["w"] / jnp.linalg.norm(g["w"])
    tau = min(0.1, float(value) / float(m @ m))
    np.testing.assert_allclose(np.asarray(u["w"]), -tau * np.asarray(m), rtol=1e-6)


def _complex_params(dtype):
    rng = np.random.RandomState(0)
    c = lambda *shape: jnp.asarray(rng.randn(*shape) + 1j * rng.randn(*shape), dtype)  # noqa
    return {"w": c(4, 3), "b": jnp.asarray(rng.randn(3), jnp.finfo(dtype).dtype),
            "k": c(2, 3, 2)}


def _complex_grads(p, t):
    """An analytic function of the params (any deterministic one serves to compare)."""
    return jax.tree.map(lambda x: jnp.sin(x) * x + 0.1, p)


def test_split_real_and_imaginary_matches_optax(trajectories):
    """Adam on the split parts (a second moment per real part) gives optax's numbers:
    complex128 to 1e-12, complex64 near that (optax's float32 bias corrections 1 - β^t cancel,
    so its complex64 run is further away)."""
    def make(lib):
        return lib.contrib.split_real_and_imaginary(lib.adam(0.01))

    def run(dtype):
        params = _complex_params(dtype)
        return trajectories.run(
            [trajectories.stepper(make(gx), params, _complex_grads),
             trajectories.stepper(make(optax), params, _complex_grads)], STEPS)

    with jax.enable_x64(True):
        (ours, _), (exact, _) = run(jnp.complex128)
    trajectories.assert_close(ours, exact, dict(rtol=1e-12, atol=1e-13), "split")
    (ours32, _), (optax32, _) = run(jnp.complex64)
    assert ours32["w"].dtype == jnp.complex64 and ours32["b"].dtype == jnp.float32
    # sin(z) z grows along the imaginary axis and carries the rounding on (AMPLIFIED above)
    trajectories.assert_close(ours32, exact, AMPLIFIED, "split (complex64 vs complex128)")
    assert _err(ours32, exact) <= 1.5 * _err(optax32, exact) + 1e-7


# -- differentially private aggregation ------------------------------------------------------

BATCH = 4


def _per_example_grads(p, t):
    """B gradients per leaf (axis 0), of different sizes: some are clipped at C = 3."""
    g = _grads(p, t)
    scales = jnp.arange(1, BATCH + 1, dtype=jnp.result_type(g["w"])) * 0.7
    return jax.tree.map(lambda x: scales.reshape((-1,) + (1,) * x.ndim) * x[None]
                        + 0.1 * jnp.sin(x + scales.reshape((-1,) + (1,) * x.ndim)), g)


def test_dpsgd_same_trajectories_and_noise_as_optax(trajectories):
    """For the same seed, the noise is optax's bit for bit: the trajectories agree."""
    def make(lib):
        return lib.contrib.dpsgd(0.05, 3.0, 0.5, 7, momentum=0.9, nesterov=True)

    def run(dtype):
        params = _params(dtype)
        return trajectories.run([trajectories.stepper(make(lib), params, _per_example_grads)
                                 for lib in (gx, optax)], STEPS)

    with jax.enable_x64(True):
        (ours, _), (exact, _) = run(jnp.float64)
    trajectories.assert_close(ours, exact, dict(rtol=1e-12, atol=1e-13), "dpsgd")
    assert min(float(jnp.max(jnp.abs(x[-1] - x[0]))) for x in jax.tree.leaves(ours)) > 1e-2
    (ours32, _), (optax32, _) = run(jnp.float32)
    trajectories.assert_close(ours32, optax32, "float32", "dpsgd float32")


def test_differentially_private_aggregate_noise_statistics():
    """ḡ - mean of the clipped gradients is N(0, (σC/B)²) per coordinate, fresh at each step."""
    rng = np.random.default_rng(0)
    grads = {"w": jnp.asarray(rng.normal(size=(BATCH, 100, 100)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(BATCH, 50)), jnp.float32)}
    clip, sigma = 1e6, 0.8  # nothing clipped: the clipped sum is the plain sum
    opt = gx.contrib.differentially_private_aggregate(clip, sigma, jax.random.key(3))
    state = opt.init(None)
    update = jax.jit(opt.update)
    u1, state = update(grads, state)
    u2, _ = update(grads, state)
    noise = (u1["w"] - jnp.mean(grads["w"], axis=0)) / (sigma * clip / BATCH)
    assert abs(float(jnp.mean(noise))) < 0.03              # 1e4 draws: σ of the mean is 0.01
    assert abs(float(jnp.std(noise)) - 1.0) < 0.03
    assert float(jnp.max(jnp.abs(u1["w"] - u2["w"]))) > 1.0  # a new draw every step
    assert u1["b"].shape == (50,)


def test_differentially_private_aggregate_clips_each_example():
    grads = {"w": jnp.asarray([[3.0, 4.0], [0.3, 0.4]])}     # norms 5 and 0.5
    opt = gx.contrib.differentially_private_aggregate(1.0, 0.0, 0)
    u, _ = jax.jit(opt.update)(grads, opt.init(None))
    np.testing.assert_allclose(np.asarray(u["w"]), [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2],
                               rtol=1e-6)


def test_dpsgd_with_momentum_checks_its_state_against_the_params():
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    opt = gx.contrib.dpsgd(0.1, 1.0, 1.0, 0, momentum=0.9)
    state = opt.init(params)
    g = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    update = jax.jit(opt.update)
    update(g, state, params)                                # per-example updates accepted
    update(g, state)
    wrong = opt.init({"w": params["w"], "b": jnp.ones(5)})
    with pytest.raises(ValueError, match="state does not match"):
        update(g, wrong, params)


def test_sam_opaque_mode_matches_optax(trajectories):
    """One update does the ascent steps itself, with the gradient function it is given."""
    def make(lib):
        return lib.contrib.sam(lib.sgd(0.05, momentum=0.9), lib.chain(
            lib.contrib.normalize(), lib.sgd(0.05, momentum=0.5)), 3, True, True)

    def stepper(opt, params):
        def step(carry, t):
            p, s = carry
            u, s = opt.update(_grads(p, t), s, p, grad_fn=_grads)
            p = optax.apply_updates(p, u)
            return (p, s), (p, s)
        return (params, opt.init(params)), step

    with jax.enable_x64(True):
        params = _params(jnp.float64)
        (ours, _), (exact, _) = trajectories.run([stepper(make(lib), params)
                                                  for lib in (gx, optax)], 30)
    trajectories.assert_close(ours, exact, dict(rtol=1e-12, atol=1e-13), "sam opaque")
    assert min(float(jnp.max(jnp.abs(x[-1] - x[0]))) for x in jax.tree.leaves(ours)) > 1e-2
    with pytest.raises(ValueError, match="grad_fn is required"):
        make(gx).update(params, make(gx).init(params), params)


@pytest.mark.parametrize("make", [lambda: gx.contrib.madgrad(1e-2), lambda: gx.contrib.cocob(),
                                  lambda: gx.contrib.prodigy()])
def test_donating_step_gives_the_numbers_of_update_and_apply(make):
    """make_step donates params and state: the copies of x_0 in the state must be arrays of
    their own, and the step keeps the numbers."""
    opt = make()
    params = _params(jnp.float32)
    reference = jax.jit(gx.update_and_apply)
    step = gx.make_step(opt)
    p_ref, s_ref = params, opt.init(params)
    p, s = jax.tree.map(jnp.copy, params), opt.init(jax.tree.map(jnp.copy, params))
    for t in range(2):
        p_ref, s_ref = reference(opt, _grads(p_ref, t), s_ref, p_ref)
        p, s = step(_grads(p, t), s, p)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((p_ref, s_ref))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
