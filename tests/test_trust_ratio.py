"""Trust ratios (LAMB, LARS, Fromage) and parameter-norm scaling: optax's trajectories, the
papers' update rules re-derived in numpy, signatures, validation and abstract init."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx

NAMES = ["scale_by_trust_ratio", "scale_by_param_block_norm", "lamb", "lars", "fromage"]
_MASK = {"w": True, "b": False, "k": True}


def _descend(direction):
    """A direction alone, followed with small descent steps."""
    return lambda lib: lib.chain(direction(lib), lib.scale(-0.01))


def _schedule(peak):
    return gx.warmup_cosine_decay_schedule(0.0, peak, 10, 100, end_value=1e-3)


# Each name once, with its options away from the defaults. LAMB's trust ratio gives optax's
# numbers bit for bit (fed optax's Adam), but gradxform's scale_by_adam rounds differently from
# optax's in the last bit, so LAMB is run where its trajectory does not amplify rounding: steps
# small enough that the params are still travelling after 100 steps (with larger ones its fixed
# relative step makes them orbit the minimum, and 1-ulp differences grow past 1e-12), and ε
# large enough that near-zero second moments do not divide by nearly nothing.
PAIRS = {
    # n_min above some update norms, so the floor is taken on some steps
    "scale_by_trust_ratio": _descend(lambda lib: lib.scale_by_trust_ratio(0.5, 0.3, 1e-3)),
    "scale_by_param_block_norm": _descend(lambda lib: lib.scale_by_param_block_norm(3.0)),
    "lamb": lambda lib: lib.lamb(0.005, 0.8, 0.99, 1e-6, 0.0, 0.1, _MASK),
    "lars": lambda lib: lib.lars(2.0, 0.05, _MASK, 0.01, 1e-4, {"w": True, "b": True,
                                                                "k": False}, 0.8, True),
    "fromage": lambda lib: lib.fromage(0.1, 0.5),
    "fromage_schedule": lambda lib: lib.fromage(_schedule(0.05)),  # optax's other code path
}


def test_same_trajectories_as_optax(three_leaf):
    three_leaf.assert_same_as_optax(PAIRS)


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_optax(name):
    ours, theirs = inspect.signature(getattr(gx, name)), inspect.signature(getattr(optax, name))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()]


# -- the papers' update rules, re-derived in numpy (float64) -----------------------------------

def _lamb_np(lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.0):
    """You et al. 2020, Algorithm 2 (φ the identity), per layer."""
    def step(t, x, g, s):
        m, v = s or (0 * g, 0 * g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        d = r + wd * x
        return x - lr * np.linalg.norm(x) / np.linalg.norm(d) * d, (m, v)
    return step


def _lars_np(gamma, eta=0.001, m_coef=0.9):
    """You, Gitman & Ginsburg 2017, Algorithm 1 with β = 0 (see test_lars_weight_decay_...):
    λ = η ‖w‖ / ‖∇L(w)‖, v = m v + γ λ ∇L(w), w = w - v."""
    def step(t, x, g, s):
        v = 0 * g if s is None else s
        v = m_coef * v + gamma * eta * np.linalg.norm(x) / np.linalg.norm(g) * g
        return x - v, v
    return step


def _fromage_np(lr):
    """Bernstein et al. 2020, Algorithm 1: W ← (W - η ‖W‖/‖g‖ g) / √(1 + η²), per layer."""
    def step(t, x, g, s):
        return (x - lr * np.linalg.norm(x) / np.linalg.norm(g) * g) / np.sqrt(1 + lr**2), None
    return step


def _block_norm_np(lr, eps):
    def step(t, x, g, s):
        return x - lr * max(np.linalg.norm(x), eps) * g, None
    return step


NUMPY = {
    "lamb": (lambda: gx.lamb(0.005, 0.8, 0.99, 1e-8, weight_decay=0.1),
             _lamb_np(0.005, 0.8, 0.99, 1e-8, 0.1)),
    "lars": (lambda: gx.lars(2.0, trust_coefficient=0.01, momentum=0.5),
                          _lars_np(2.0, 0.01, 0.5)),
    "fromage": (lambda: gx.fromage(0.05), _fromage_np(0.05)),
    "scale_by_param_block_norm": (lambda: gx.chain(gx.scale_by_param_block_norm(3.0),
                                                   gx.scale_by_learning_rate(0.01)),
                                  _block_norm_np(0.01, 3.0)),
}


def _numpy_trajectory(three_leaf, rule, steps=100):
    with jax.enable_x64(True):
        p = {k: np.asarray(v, np.float64) for k, v in three_leaf.params("float64").items()}
    state = {k: None for k in p}
    out = []
    for t in range(1, steps + 1):
        g = three_leaf.grad_np(p)
        new = {}
        for k in p:
            new[k], state[k] = rule(t, p[k], g[k], state[k])
        p = new
        out.append(p)
    return {k: np.stack([q[k] for q in out]) for k in p}


def test_numpy_rederivation(three_leaf):
    names = sorted(NUMPY)
    with jax.enable_x64(True):
        runs = three_leaf.run([NUMPY[n][0]() for n in names], three_leaf.params("float64"))
    for name, ours in zip(names, runs):
        ref = _numpy_trajectory(three_leaf, NUMPY[name][1])
        for k in ref:
            np.testing.assert_allclose(np.asarray(ours[k]), ref[k], rtol=1e-11, atol=1e-12,
                                       err_msg=f"{name} {k}")


def test_lars_weight_decay_divides_by_the_norm_of_the_decayed_gradient():
    """optax's LARS (and this one) divides by ‖g + βw‖ + ε, the paper's Algorithm 1 by
    ‖g‖ + β‖w‖ (the same for β = 0, as re-derived above): one step shows which."""
    w, g, beta, gamma, c = np.array([3.0, 4.0]), np.array([1.0, 0.0]), 0.5, 0.1, 0.01
    opt = gx.lars(gamma, beta, trust_coefficient=c, momentum=0.0)
    with jax.enable_x64(True):
        u, _ = opt.update(jnp.asarray(g), opt.init(jnp.asarray(w)), jnp.asarray(w))
    d = g + beta * w
    np.testing.assert_allclose(np.asarray(u), -gamma * c * 5.0 / np.linalg.norm(d) * d,
                               rtol=1e-14)
    paper = -gamma * c * 5.0 / (np.linalg.norm(g) + beta * 5.0) * d
    assert np.max(np.abs(np.asarray(u) - paper)) > 1e-4


# -- edge cases, validation, abstract init ----------------------------------------------------

def test_trust_ratio_is_one_for_a_zero_param_or_zero_update():
    """A zero-initialised leaf keeps its update (otherwise it would never move); a zero update
    stays zero. Other leaves get c ‖θ‖ / (‖u‖ + ε)."""
    params = {"zero": jnp.zeros(3), "w": jnp.array([3.0, 4.0]), "still": jnp.ones(2)}
    updates = {"zero": jnp.array([1.0, 2.0, 2.0]), "w": jnp.array([0.0, 10.0]),
               "still": jnp.zeros(2)}
    opt = gx.scale_by_trust_ratio(trust_coefficient=0.5, eps=1.0)
    u, _ = opt.update(updates, opt.init(params), params)
    np.testing.assert_array_equal(np.asarray(u["zero"]), [1.0, 2.0, 2.0])
    np.testing.assert_allclose(np.asarray(u["w"]), [0.0, 10.0 * 0.5 * 5.0 / 11.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(u["still"]), [0.0, 0.0])


def test_fromage_keeps_norms_when_the_gradient_is_orthogonal():
    """With g ⊥ θ, ‖θ - η (‖θ‖/‖g‖) g‖ = √(1 + η²) ‖θ‖: the division restores ‖θ‖ exactly."""
    theta, g = jnp.array([3.0, 4.0]), jnp.array([-4.0, 3.0])
    opt = gx.fromage(0.3)
    u, _ = opt.update(g, opt.init(theta), theta)
    np.testing.assert_allclose(float(jnp.linalg.norm(theta + u)), 5.0, rtol=1e-6)


BAD = [
    (lambda: gx.scale_by_trust_ratio(-1.0),
     "scale_by_trust_ratio: min_norm must be >= 0, got -1.0"),
    (lambda: gx.scale_by_trust_ratio(trust_coefficient=-0.1),
     "scale_by_trust_ratio: trust_coefficient must be >= 0, got -0.1"),
    (lambda: gx.scale_by_trust_ratio(eps=float("nan")), "scale_by_trust_ratio: eps must be finite"),
    (lambda: gx.scale_by_param_block_norm(-1e-3),
     "scale_by_param_block_norm: min_scale must be >= 0, got -0.001"),
    (lambda: gx.scale_and_shrink(-0.1), "scale_and_shrink: learning_rate must be >= 0, got -0.1"),
    (lambda: gx.lamb(0.1, b1=1.0), "scale_by_adam: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.lamb(0.1, weight_decay=-1.0), "add_decayed_weights: weight_decay must be >= 0"),
    (lambda: gx.lars(0.1, momentum=1.5), "trace: decay must be in [0, 1], got 1.5"),
    (lambda: gx.lars(0.1, trust_coefficient=-1.0), "trust_coefficient must be >= 0, got -1.0"),
    (lambda: gx.lars(-0.1), "scale_by_learning_rate: learning_rate must be >= 0, got -0.1"),
    (lambda: gx.fromage(0.1, min_norm=-1.0), "scale_by_trust_ratio: min_norm must be >= 0"),
    (lambda: gx.fromage(-0.1), "scale_and_shrink: learning_rate must be >= 0, got -0.1"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_min_scale_is_a_constant_and_params_are_required():
    with pytest.raises(TypeError, match="min_scale is a constant of scale_by_param_block_norm"):
        gx.scale_by_param_block_norm(lambda count: 1e-3)
    for opt, owner in [(gx.scale_by_trust_ratio(), "scale_by_trust_ratio"),
                       (gx.scale_by_param_block_norm(), "scale_by_param_block_norm"),
                       (gx.fromage(0.1), "scale_by_trust_ratio")]:
        p = {"w": jnp.ones(3)}
        with pytest.raises(ValueError, match=f"{owner}.update: params are required"):
            opt.update(p, opt.init(p))


@pytest.mark.parametrize("name", ["scale_by_trust_ratio", "scale_by_param_block_norm",
                                  "scale_and_shrink", "lamb", "lars", "fromage"])
def test_init_works_on_abstract_params(name, three_leaf):
    opt = {"scale_by_trust_ratio": lambda: gx.scale_by_trust_ratio(),
           "scale_by_param_block_norm": lambda: gx.scale_by_param_block_norm(),
           "scale_and_shrink": lambda: gx.scale_and_shrink(0.1),
           "lamb": lambda: gx.lamb(1e-3), "lars": lambda: gx.lars(0.1),
           "fromage": lambda: gx.fromage(0.1)}[name]()
    params = three_leaf.params("float32")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    shapes = jax.eval_shape(opt.init, abstract)
    concrete = opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(concrete)
    assert [(s.shape, s.dtype) for s in jax.tree.leaves(shapes)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(concrete)]
