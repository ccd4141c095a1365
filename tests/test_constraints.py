"""keep_params_nonnegative: optax's numbers, the projection in numpy, the kernel."""

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

# Steps large enough that most coordinates reach the bound (the params start around 0 ± 1 and
# the gradients θ - ½ + noise push them down half of the time).
PAIRS = {
    "keep_params_nonnegative": lambda lib: lib.chain(lib.sgd(0.3),
                                                     lib.keep_params_nonnegative()),
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
    ours, _ = runs[0][name]
    leaves = [np.asarray(x) for x in jax.tree.leaves(ours)]
    assert all(np.all(x[1:] >= 0) for x in leaves)  # after a first step from negative params
    assert sum(np.sum(x == 0) for x in leaves) > 10, "the bound was hardly ever reached"


def test_signature_is_optax_s():
    assert inspect.signature(gx.keep_params_nonnegative).parameters == \
        inspect.signature(optax.keep_params_nonnegative).parameters


def _projected_sgd_np(lr):
    """θ_t = max(θ_{t-1} - η g_t, 0), the projection onto θ ≥ 0, written as u_t = θ_t - θ_{t-1}."""
    def step(t, g, s, p):
        return np.maximum(p - lr * g, 0.0) - p, None
    return step


def test_numpy_rederivation_is_projected_gradient_descent():
    # From a first step on the params are ≥ 0, and θ + u is then θ - η g clipped at 0 exactly.
    assert_matches_numpy(gx.chain(gx.sgd(0.3), gx.keep_params_nonnegative()),
                         _projected_sgd_np(0.3))


def test_updates_leave_no_param_negative():
    p = {"w": jnp.array([1.0, 0.5, 0.0, -1.0]), "b": jnp.array(2.0, jnp.bfloat16)}
    u = {"w": jnp.array([-3.0, 0.25, -1e-3, 0.5]), "b": jnp.array(-5.0, jnp.bfloat16)}
    opt = gx.keep_params_nonnegative()
    out, _ = opt.update(u, opt.init(p), p)
    np.testing.assert_array_equal(out["w"], [-1.0, 0.25, 0.0, 1.0])  # -θ where θ + u < 0
    assert out["b"].dtype == jnp.bfloat16 and float(out["b"]) == -2.0
    with pytest.raises(ValueError, match="keep_params_nonnegative.update: params are required"):
        opt.update(u, opt.init(p))


@pytest.mark.skipif(not kernel.available(),
                    reason=f"the vector kernel does not run here: {kernel.status()}")
def test_make_step_fuses_it_with_the_numbers_of_the_xla_program():
    assert_fused_like_xla(gx.chain(gx.scale_by_learning_rate(3.0), gx.keep_params_nonnegative()))
