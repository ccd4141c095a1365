"""ElementwiseTransformation: a transformation written as its per-element equation.

A user's own transformation (RMSprop's direction, written here as the README shows it) passes
the conformance check and gives the numbers of a numpy re-derivation; the generic update widens
a narrow buffer to the gradients' precision and rounds it once, when storing.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform.testing import check_transformation


class RmsDirectionState(NamedTuple):
    count: Any
    nu: Any


@gx.pytree_dataclass
class rms_direction(gx.ElementwiseTransformation):
    """u_t = g_t / (√v_t + ε),  v_t = ρ v_{t-1} + (1 - ρ) g_t² (Hinton's RMSprop)."""

    rho: float = gx.hyperparameter(0.9)
    eps: float = gx.hyperparameter(1e-8)
    buffer_dtype: Any = gx.static(None)

    state_type = RmsDirectionState

    def init_buffers(self, params):
        return (jax.tree.map(lambda p: jnp.zeros_like(p, dtype=self.buffer_dtype), params),)

    def element(self, s, g, v):
        v = s.rho * v + (1 - s.rho) * g * g
        return g / (jnp.sqrt(v) + s.eps), (v,)


def _numpy_rms_direction(grads, rho, eps):
    v = np.zeros_like(grads[0])
    out = []
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        out.append(g / (np.sqrt(v) + eps))
    return out


def test_a_users_elementwise_transformation_passes_the_conformance_check():
    check_transformation(rms_direction(rho=0.8))


def test_a_users_elementwise_transformation_matches_numpy():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(4, 3)) for _ in range(5)]
    with jax.enable_x64(True):
        t = rms_direction(rho=0.8, eps=1e-6)
        state = t.init({"w": jnp.zeros((4, 3), jnp.float64)})
        got = []
        for g in grads:
            u, state = jax.jit(t.update)({"w": jnp.asarray(g)}, state)
            got.append(np.asarray(u["w"]))
    want = _numpy_rms_direction(grads, 0.8, 1e-6)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-13)
    assert int(state.count) == 5


def test_a_scheduled_hyperparameter_is_evaluated_at_the_state_count():
    rho = gx.linear_schedule(0.5, 0.9, 4)
    t = rms_direction(rho=rho, eps=0.0)
    g = {"w": jnp.full((2,), 2.0)}
    state = t.init(g)
    v = 0.0
    for k in range(4):
        _, state = t.update(g, state)
        r = float(rho(k))
        v = r * v + (1 - r) * 4.0
        np.testing.assert_allclose(np.asarray(state.nu["w"]), v, rtol=1e-6)


def test_a_bfloat16_buffer_is_updated_in_float32_and_rounded_once():
    t = rms_direction(rho=0.9, eps=0.0, buffer_dtype=jnp.bfloat16)
    g = {"w": jnp.asarray([3.0, 0.1, 1e-3], jnp.float32)}
    state = t.init(g)
    assert state.nu["w"].dtype == jnp.bfloat16
    u, state = t.update(g, state)
    v32 = 0.1 * np.asarray(g["w"], np.float32) ** 2            # updated in float32
    np.testing.assert_array_equal(np.asarray(state.nu["w"]),
                                  np.asarray(jnp.asarray(v32).astype(jnp.bfloat16)))
    # The update uses the float32 value, not the rounded one.
    np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(g["w"]) / np.sqrt(v32), rtol=1e-6)
    assert u["w"].dtype == jnp.float32


def test_array_hyperparameters_are_cast_to_the_leaf_precision():
    t = rms_direction(rho=jnp.asarray(0.9, jnp.float32), eps=jnp.asarray(1e-8, jnp.float32))
    g = {"w": jnp.ones((3,), jnp.bfloat16)}
    state = t.init(g)
    with jax.numpy_dtype_promotion("strict"):
        u, state = t.update(g, state)
    assert u["w"].dtype == jnp.bfloat16
    assert state.nu["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("leaf", [None, jnp.zeros((0,))])
def test_none_and_empty_leaves_pass_through(leaf):
    t = rms_direction()
    params = {"a": jnp.ones((2,)), "b": leaf}
    state = t.init(params)
    u, state = t.update(params, state)
    assert (u["b"] is None) if leaf is None else (u["b"].shape == (0,))
    np.testing.assert_allclose(np.asarray(u["a"]), 1 / (np.sqrt(0.1) + 1e-8), rtol=1e-6)
