"""Fixtures shared by the test files: a mixed tree of params, fixed noisy gradients, float64, and
the runner that follows several optimizers side by side and compares their trajectories.

    def test_same_trajectories_as_optax(mixed_params, noisy_gradients, trajectories):
        params = mixed_params("float32")
        grads = noisy_gradients(params)
        ours, theirs = trajectories.run([trajectories.stepper(gx.sgd(0.1), params, grads),
                                         trajectories.stepper(optax.sgd(0.1), params, grads)])
        trajectories.assert_close(ours, theirs, "float32")
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest


@pytest.fixture
def x64():
    """Runs the test with float64 enabled (`pytestmark = pytest.mark.usefixtures("x64")`)."""
    with jax.enable_x64(True):
        yield


def make_mixed_params(dtype, *, head: bool = True) -> dict:
    """A nested tree of a matrix and a vector, a second matrix (`head`), a scalar and a None leaf.

    Drawn from a fixed generator, in this order, so a test sees the same numbers every run.
    """
    rng = np.random.default_rng(0)
    params = {"dense": {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype),
                        "b": jnp.asarray(rng.normal(size=(3,)), dtype)}}
    if head:
        params["head"] = {"w": jnp.asarray(rng.normal(size=(3, 2)), dtype)}
    params["scale"] = jnp.asarray(rng.normal(), dtype)
    params["frozen"] = None
    return params


@pytest.fixture
def mixed_params():
    """`mixed_params(dtype, *, head=True)`: see `make_mixed_params`."""
    return make_mixed_params


def make_gradient_noise(params, *, steps: int = 100, spike_every: int | None = None,
                        nan_steps=()) -> dict:
    """Fixed noise for every leaf of `params` and every step, numpy float64 of shape (steps, ...).

    With `spike_every=k` the noise is 10x larger at every k-th step (to trip clipping); with
    `nan_steps`, the first coordinate of every leaf is NaN at those steps.
    """
    rng = np.random.default_rng(1)

    def noise_for(x):
        n = rng.normal(size=(steps,) + x.shape)
        if spike_every is not None:
            n = n * np.where(np.arange(steps) % spike_every == 0, 10.0, 1.0
                             ).reshape((steps,) + (1,) * x.ndim)
        for t in nan_steps:
            n.reshape(steps, -1)[t, 0] = np.nan
        return n

    return jax.tree.map(noise_for, params)


def gradients_from_noise(noise):
    """g_t(θ) = θ - ½ + noise_t, with the noise cast to each leaf's dtype."""
    return lambda p, t: jax.tree.map(lambda x, n: (x - 0.5) + jnp.asarray(n, x.dtype)[t], p,
                                        noise)


@pytest.fixture
def gradient_noise():
    """`gradient_noise(params, *, steps=100, spike_every=None, nan_steps=())`: see
    `make_gradient_noise`."""
    return make_gradient_noise


@pytest.fixture
def noisy_gradients():
    """`noisy_gradients(params, *, noise=None, **noise_options)`: g_t(θ) = θ - ½ + noise_t, as a
    function of (θ, t), with `noise` if given (from `gradient_noise`, to re-derive the same run
    in numpy), else the noise of `make_gradient_noise(params, **noise_options)`."""
    def noisy_gradients(params, *, noise=None, **options):
        return gradients_from_noise(make_gradient_noise(params, **options) if noise is None
                                    else noise)

    return noisy_gradients


class Trajectories:
    """Several optimizers followed side by side, in one compiled `lax.scan`, and compared."""

    # 100-step trajectories agree to a few ulp when the optimizer does not amplify rounding.
    TOL = {"float32": dict(rtol=1e-6, atol=5e-7), "float64": dict(rtol=1e-13, atol=1e-14)}

    @staticmethod
    def stepper(opt, params, grads):
        """(initial carry, step) for `opt` (gradxform or optax) following the gradients `grads`,
        a function of (params, t); each step outputs (params, state) after it."""
        def step(carry, t):
            p, s = carry
            u, s = opt.update(grads(p, t), s, p)
            p = optax.apply_updates(p, u)
            return (p, s), (p, s)

        return (params, opt.init(params)), step

    @staticmethod
    def run(steppers, steps: int = 100) -> list:
        """The outputs of every stepper at every step, all in one lax.scan (one compilation)."""
        def body(carries, t):
            outs = [step(c, t) for (_, step), c in zip(steppers, carries)]
            return [c for c, _ in outs], [o for _, o in outs]

        init = [c for c, _ in steppers]
        return jax.jit(lambda: jax.lax.scan(body, init, jnp.arange(steps))[1])()

    @staticmethod
    def on_loss(opt, apply, params, loss, steps: int):
        """The params before each of `steps` steps of `opt` on the gradients of `loss`, applied
        with `apply` (gx.apply_updates or optax.apply_updates), in one lax.scan."""
        def body(carry, _):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (apply(p, u), s), p

        return jax.lax.scan(body, (params, opt.init(params)), None, length=steps)[1]

    @classmethod
    def assert_close(cls, a, b, tol, what: str = "") -> None:
        """Same structure, and every leaf close within `tol` (a dict of rtol/atol, or a key of
        TOL)."""
        tol = cls.TOL[tol] if isinstance(tol, str) else tol
        assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), what
        for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a),
                                jax.tree_util.tree_leaves(b)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol,
                                       err_msg=what + jax.tree_util.keystr(path))


@pytest.fixture
def trajectories():
    """The `Trajectories` runner and comparisons."""
    return Trajectories
