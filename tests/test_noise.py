"""Gradient noise: optax's draws for the same key, and the noise's statistics against the paper's
variance η / t^γ."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_matches_optax, run_optax_pairs

import gradxform as gx
from gradxform._src.fast import fusion

PAIRS = {
    "add_noise": lambda lib: lib.chain(lib.add_noise(0.3, 1.0, 7), lib.scale(-0.01)),
    "noisy_sgd": lambda lib: lib.noisy_sgd(0.02, 0.1, 0.3, jax.random.key(5)),
}


@pytest.fixture(scope="module")
def runs():
    with jax.enable_x64(True):
        runs64 = run_optax_pairs(PAIRS, jnp.float64)
    runs32 = run_optax_pairs(PAIRS, jnp.float32)
    return runs64, runs32


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax_for_the_same_key(name, runs):
    assert_matches_optax(name, *runs)


@pytest.mark.parametrize("name", ["add_noise", "noisy_sgd"])
def test_signature_is_optax_s(name):
    ours = inspect.signature(getattr(gx, name)).parameters.values()
    theirs = inspect.signature(getattr(optax, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _noise_program(opt, steps, n):
    zeros = {"a": jnp.zeros(n), "b": jnp.zeros((n // 4, 4))}

    def step(s, _):
        u, s = opt.update(zeros, s)
        return s, (u["a"], u["b"].ravel())

    return jax.lax.scan(step, opt.init(zeros), None, length=steps)[1]


def _noise(opt, steps, n=40_000):
    """The noise u_t of `steps` steps on zero gradients, for two leaves of n elements (the
    transformation is an argument: another key reuses the compiled program)."""
    a, b = _noise_program(opt, steps, n)
    return np.asarray(a, np.float64), np.asarray(b, np.float64)


def _first_noise(opt, n=16):
    """The first step's noise on a zero leaf, eagerly (no compilation)."""
    zeros = {"a": jnp.zeros(n)}
    return np.asarray(opt.update(zeros, opt.init(zeros))[0]["a"])


def test_noise_has_the_paper_s_variance_and_is_independent():
    """σ_t² = η / t^γ (Neelakantan et al.: η / (1 + t)^γ with t from 0), zero mean, independent
    across leaves and steps. With 40 000 samples the sample variance is within 5 % (7 standard
    errors) of σ_t²."""
    eta, gamma, steps = 0.3, 0.55, 12
    a, b = _noise(gx.add_noise(eta, gamma, 11), steps)
    for t in (1, 2, 12):
        sigma2 = eta / t**gamma
        for x in (a[t - 1], b[t - 1]):
            assert abs(np.mean(x)) < 5 * np.sqrt(sigma2 / x.size)
            assert abs(np.var(x) / sigma2 - 1) < 0.05, (t, np.var(x), sigma2)
    assert abs(np.corrcoef(a[0], b[0])[0, 1]) < 0.02   # leaves draw independently
    assert abs(np.corrcoef(a[0], a[1])[0, 1]) < 0.02   # and steps do


def test_keys():
    same = _first_noise(gx.add_noise(0.1, 0.5, jax.random.key(2)))
    np.testing.assert_array_equal(same, _first_noise(gx.add_noise(0.1, 0.5, 2)))
    np.testing.assert_array_equal(same, _first_noise(gx.add_noise(0.1, 0.5, seed=2)))
    np.testing.assert_array_equal(   # raw key data, as jax.random.PRNGKey makes it
        same, _first_noise(gx.add_noise(0.1, 0.5, jax.random.PRNGKey(2))))
    assert not np.any(same == _first_noise(gx.add_noise(0.1, 0.5, 3)))
    np.testing.assert_array_equal(_first_noise(gx.add_noise(0.1, 0.5)),
                                  _first_noise(gx.add_noise(0.1, 0.5, 0)))  # None: key 0
    state = gx.add_noise(0.1, 0.5, 2).init({"w": jnp.zeros(2)})
    assert state._fields == ("count", "rng_key")
    assert jnp.issubdtype(state.rng_key.dtype, jax.dtypes.prng_key)


def test_make_step_fuses_the_learning_rate_after_the_noise():
    """add_noise draws random numbers, so make_step runs it through XLA and fuses what follows
    (here the learning rate and θ + u)."""
    opt = gx.noisy_sgd(0.1, key=0)
    members = [t for t, _ in fusion.flat_members(opt, opt.init({"w": jnp.zeros(3)}))]
    assert fusion.runs(members) == [(1, 2)]


BAD = [
    (lambda: gx.add_noise(-0.01, 0.55, 0), ValueError, "add_noise: eta must be >= 0, got -0.01"),
    (lambda: gx.add_noise(0.01, -1.0, 0), ValueError, "add_noise: gamma must be >= 0, got -1.0"),
    (lambda: gx.add_noise(0.01, 0.55, 0, seed=1), ValueError,
     "add_noise: give key or seed, not both"),
    (lambda: gx.noisy_sgd(0.1, eta=float("nan")), ValueError,
     "add_noise: eta must be finite, got nan"),
    (lambda: gx.noisy_sgd(-0.1), ValueError,
     "scale_by_learning_rate: learning_rate must be >= 0, got -0.1"),
    (lambda: gx.add_noise(0.01, 0.55, lambda count: 0), TypeError,
     "add_noise: key must be a number or an array"),
]


@pytest.mark.parametrize("make, error, message", BAD, ids=[m for _, _, m in BAD])
def test_invalid_hyperparameters_are_named(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)


def test_a_checkpointed_state_resumes_with_the_same_draws(tmp_path):
    """The key in the state is a typed PRNG key; orbax stores its data, and restore rebuilds
    the key from `like`, so the resumed run draws what the uninterrupted one draws."""
    from gradxform import checkpoint

    opt = gx.noisy_sgd(0.1, key=jax.random.key(1))
    p = {"w": jnp.ones(3)}
    state = opt.update(p, opt.init(p), p)[1]
    checkpoint.save(tmp_path / "ckpt", {"opt_state": state, "optimizer": opt})
    restored = checkpoint.restore(
        tmp_path / "ckpt", {"opt_state": jax.eval_shape(opt.init, p), "optimizer": opt})
    np.testing.assert_array_equal(opt.update(p, restored["opt_state"], p)[0]["w"],
                                  opt.update(p, state, p)[0]["w"])
