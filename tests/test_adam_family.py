"""NAdamW, AdaMaxW and AMSGrad's bias-correction options: optax's numbers, numpy, the kernel."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
    assert_fused_like_xla,
    assert_matches_numpy,
    assert_matches_optax,
    run_optax_pairs,
)

import gradxform as gx
from gradxform._src.fast import kernel

_MASK = {"w": True, "b": False, "k": True, "c": False, "n": False}
# One pair per name or option, its arguments away from the defaults (the signature tests hold
# the defaults to optax's).
PAIRS = {
    "nadamw": lambda lib: lib.nadamw(0.01, 0.8, 0.99, 1e-6, 1e-9, None, 0.05, _MASK),
    "adamaxw": lambda lib: lib.adamaxw(0.01, 0.8, 0.99, 1e-6, 0.05, _MASK),
    "amsgrad_paper": lambda lib: lib.amsgrad(
        0.01, bias_correction_mu=False, bias_correction_nu=False),
    "amsgrad_nu_only": lambda lib: lib.amsgrad(
        0.01, bias_correction_mu=False, bias_correction_nu=True),
}
# optax forms 1 - β^t in float32 (see test_adam_variants): compare with the exact run.
EXACT32 = {"nadamw", "amsgrad_nu_only"}


@pytest.fixture(scope="module")
def runs():
    with jax.enable_x64(True):
        runs64 = run_optax_pairs(PAIRS, jnp.float64)
    runs32 = run_optax_pairs(PAIRS, jnp.float32)
    return runs64, runs32


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax(name, runs):
    assert_matches_optax(name, *runs, exact32=name in EXACT32)


@pytest.mark.parametrize("name", ["nadamw", "adamaxw"])
def test_signature_is_optax_s(name):
    ours = inspect.signature(getattr(gx, name)).parameters.values()
    theirs = inspect.signature(getattr(optax, name)).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours] == \
        [(p.name, p.kind, p.default) for p in theirs]


@pytest.mark.parametrize("name", ["scale_by_amsgrad", "amsgrad"])
def test_bias_correction_options_are_optax_s(name):
    ours = inspect.signature(getattr(gx, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    for option in ("bias_correction_mu", "bias_correction_nu"):
        assert ours[option].default == theirs[option].default is True


def _amsgrad_paper_np(lr, b1=0.9, b2=0.999, eps=1e-8, debias_m=False):
    """Reddi, Kale & Kumar, Algorithm 1 (with ε outside the root): no bias correction,
    v̂_t = max(v̂_{t-1}, v_t), θ_t = θ_{t-1} - α m_t / (√v̂_t + ε)."""
    def step(t, g, s, p):
        m, v, v_max = s or (0 * g, 0 * g, 0 * g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        m_hat = m / (1 - b1**t) if debias_m else m
        return -lr * m_hat / (np.sqrt(v_max) + eps), (m, v, v_max)
    return step


def _adamaxw_np(lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
    """Kingma & Ba §7.1, u_t = max(β2 u_{t-1}, |g_t| + ε) (ε as optax and torch), with
    decoupled decay: θ_t = θ_{t-1} - η (m_t / ((1 - β1^t) u_t) + λ θ_{t-1})."""
    def step(t, g, s, p):
        m, u = s or (0 * g, 0 * g)
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        return -lr * (m / (1 - b1**t) / u + weight_decay * p), (m, u)
    return step


NUMPY = {
    # Without the correction of v, where it would be applied (max_of) makes no difference.
    "amsgrad_paper": (lambda: gx.amsgrad(0.01, max_of="raw", bias_correction_mu=False,
                                         bias_correction_nu=False), _amsgrad_paper_np(0.01)),
    "amsgrad_mu_only": (lambda: gx.amsgrad(0.01, bias_correction_nu=False),
                        _amsgrad_paper_np(0.01, debias_m=True)),
    "adamaxw": (lambda: gx.adamaxw(0.01, weight_decay=0.05), _adamaxw_np(0.01, 0.05)),
}


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_numpy_rederivation(name):
    make, direction = NUMPY[name]
    assert_matches_numpy(make(), direction)


def test_nadamw_is_adamw_with_nesterov():
    assert gx.nadamw(1e-3, weight_decay=0.1) == gx.adamw(1e-3, weight_decay=0.1, nesterov=True)
    assert gx.nadamw(1e-3, nesterov=False) == gx.adamw(1e-3)


@pytest.mark.skipif(not kernel.available(),
                    reason=f"the vector kernel does not run here: {kernel.status()}")
@pytest.mark.parametrize("name", ["nadamw", "adamaxw", "amsgrad_paper"])
def test_make_step_fuses_them_with_the_numbers_of_the_xla_program(name):
    assert_fused_like_xla({
        "nadamw": lambda: gx.nadamw(1e-2, weight_decay=1e-2),
        "adamaxw": lambda: gx.adamaxw(1e-2, weight_decay=1e-2),
        "amsgrad_paper": lambda: gx.amsgrad(1e-2, bias_correction_mu=False,
                                            bias_correction_nu=False),
    }[name]())


BAD = [
    (lambda: gx.nadamw(0.1, 1.0), "scale_by_adam: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.nadamw(0.1, weight_decay=-1.0),
     "add_decayed_weights: weight_decay must be >= 0, got -1.0"),
    (lambda: gx.adamaxw(0.1, b2=1.5), "scale_by_adamax: b2 must be in [0, 1), got 1.5"),
    (lambda: gx.adamaxw(0.1, eps=-1e-8), "scale_by_adamax: eps must be >= 0, got -1e-08"),
    (lambda: gx.adamaxw(-0.1), "scale_by_learning_rate: learning_rate must be >= 0, got -0.1"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)
