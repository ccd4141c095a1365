"""NovoGrad: optax's numbers, the paper's Algorithm 1 in numpy, one second moment per leaf."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_matches_numpy, assert_matches_optax, run_optax_pairs

import gradxform as gx

# Arguments away from the defaults (test_signature_is_optax_s holds the defaults to optax's).
PAIRS = {
    "scale_by_novograd": lambda lib: lib.chain(
        lib.scale_by_novograd(0.8, 0.5, 1e-6, 1e-9, 0.1), lib.scale(-0.01)),
    "novograd": lambda lib: lib.novograd(0.01, 0.95, 0.98, weight_decay=0.05),
}


@pytest.fixture(scope="module")
def runs():
    with jax.enable_x64(True):
        runs64 = run_optax_pairs(PAIRS, jnp.float64)
    runs32 = run_optax_pairs(PAIRS, jnp.float32)
    return runs64, runs32


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax(name, runs):
    assert_matches_optax(name, *runs)


@pytest.mark.parametrize("name", ["scale_by_novograd", "novograd"])
def test_signature_is_optax_s(name):
    ours = inspect.signature(getattr(gx, name)).parameters.values()
    theirs = inspect.signature(getattr(optax, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]


def _novograd_np(lr, b1, b2, eps, weight_decay):
    """Ginsburg et al., Algorithm 1, per layer l: v_1 = ‖g_1‖², v_t = β2 v_{t-1} + (1 - β2)
    ‖g_t‖²; m_1 = g_1/(√v_1 + ε) + d θ_0, m_t = β1 m_{t-1} + (g_t/(√v_t + ε) + d θ_{t-1});
    θ_t = θ_{t-1} - λ m_t."""
    def step(t, g, s, p):
        norm2 = float(np.sum(g * g))
        if s is None:
            v = norm2
            m = g / (np.sqrt(v) + eps) + weight_decay * p
        else:
            m, v = s
            v = b2 * v + (1 - b2) * norm2
            m = b1 * m + (g / (np.sqrt(v) + eps) + weight_decay * p)
        return -lr * m, (m, v)
    return step


def test_numpy_rederivation_of_the_paper(b1=0.95, b2=0.98, eps=1e-8, weight_decay=0.05):
    assert_matches_numpy(gx.novograd(0.01, b1, b2, eps, weight_decay=weight_decay),
                         _novograd_np(0.01, b1, b2, eps, weight_decay))


def test_one_second_moment_per_leaf_and_invariance_to_a_layer_s_scale():
    opt = gx.scale_by_novograd()
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2, jnp.bfloat16)}
    s = opt.init(params)
    assert s._fields == ("count", "mu", "nu")
    assert [jnp.shape(x) for x in jax.tree.leaves(s.nu)] == [(), ()]
    assert s.nu["b"].dtype == jnp.float32  # a float32 moment for 16-bit params
    g = {"w": jnp.arange(6.0).reshape(3, 2), "b": jnp.ones(2, jnp.bfloat16)}
    u1, _ = opt.update(g, s, params)
    u2, _ = opt.update({"w": 1e3 * g["w"], "b": g["b"]}, s, params)
    np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)  # the layer's scale cancels
    assert u1["b"].dtype == jnp.bfloat16


def test_params_are_required():
    opt = gx.scale_by_novograd()
    with pytest.raises(ValueError, match="scale_by_novograd.update: params are required"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))


BAD = [
    (lambda: gx.scale_by_novograd(1.0), "scale_by_novograd: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.scale_by_novograd(b2=-0.25), "scale_by_novograd: b2 must be in [0, 1), got -0.25"),
    (lambda: gx.scale_by_novograd(eps=-1.0), "scale_by_novograd: eps must be >= 0, got -1.0"),
    (lambda: gx.scale_by_novograd(eps_root=-1.0), "scale_by_novograd: eps_root must be >= 0"),
    (lambda: gx.novograd(0.1, weight_decay=-0.1),
     "scale_by_novograd: weight_decay must be >= 0, got -0.1"),
    (lambda: gx.novograd(-0.1), "scale_by_learning_rate: learning_rate must be >= 0, got -0.1"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)
