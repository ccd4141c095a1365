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

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx


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


# -- optax's elementwise optimizers: many pairs compared in one compiled run --------------------

def make_cube_params(dtype) -> dict:
    """A matrix, a vector, a 3-D leaf, a scalar and a None leaf, drawn from a fixed generator."""
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype),
            "b": jnp.asarray(rng.normal(size=(3,)), dtype),
            "k": jnp.asarray(rng.normal(size=(2, 3, 2)), dtype),
            "c": jnp.asarray(rng.normal(), dtype),
            "n": None}


def run_optax_pairs(pairs: dict, dtype, *, steps: int = 100) -> dict:
    """{name: (gradxform's params after each step, optax's)} for `pairs[name](lib)` built with
    lib = gradxform and lib = optax, on `make_cube_params(dtype)` and the gradients
    g_t(θ) = θ - ½ + noise_t (`make_gradient_noise`), every pair in one lax.scan."""
    params = make_cube_params(dtype)
    grads = gradients_from_noise(make_gradient_noise(params, steps=steps))
    steppers = [Trajectories.stepper(make(lib), params, grads)
                for make in pairs.values() for lib in (gx, optax)]
    outs = Trajectories.run(steppers, steps)
    return {name: (outs[2 * i][0], outs[2 * i + 1][0]) for i, name in enumerate(pairs)}


def assert_matches_optax(name: str, runs64: dict, runs32: dict, *, exact32: bool = False) -> None:
    """float64 to 1e-12 relative; float32 within `Trajectories.TOL` of optax's float32 run, or,
    with `exact32` (optax forms bias corrections 1 - β^t in float32 and loses digits), of the
    exact float64 run and no further from it than optax's float32 run."""
    ours64, exact = runs64[name]
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(ours64))
    moved = max(float(np.max(np.abs(np.asarray(x[-1]) - np.asarray(x[0]))))
                for x in jax.tree.leaves(ours64))
    assert moved > 1e-2, f"{name}: the params barely moved, the comparison says little"
    Trajectories.assert_close(ours64, exact, dict(rtol=1e-12, atol=1e-13), name)
    ours32, optax32 = runs32[name]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ours32))
    if not exact32:
        Trajectories.assert_close(ours32, optax32, "float32", f"{name} (float32)")
        return
    Trajectories.assert_close(ours32, exact, "float32", f"{name} (float32 vs exact)")

    def err(a):
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(exact)))

    assert err(ours32) <= err(optax32), name


def assert_fused_like_xla(opt, *, steps: int = 3, ulps: int = 4) -> None:
    """make_step runs the whole chain `opt` as one run of elementwise transformations, through
    the vector kernel, with the numbers of the XLA program: within `ulps` units in the last
    place of each leaf's largest value (XLA may contract a product and a sum into one fused
    multiply-add where the kernel rounds twice)."""
    from gradxform._src.fast import fusion, kernel

    members = [t for t, _ in fusion.flat_members(opt, opt.init({"w": jnp.zeros(3)}))]
    assert fusion.runs(members) == [(0, len(members))], (
        f"{opt!r} is not one run of ElementwiseTransformations: make_step would not fuse it "
        f"whole, and the comparison below would compare XLA with itself")
    rng = np.random.default_rng(0)
    sizes = (70_001, 1 << 14, 10)  # the last leaf is below the kernel's threshold

    def tree(scale=1.0, shift=0.0):
        return {f"l{i}": jnp.asarray(shift + scale * rng.normal(size=n), jnp.float32)
                for i, n in enumerate(sizes)}

    fused = gx.make_step(opt)  # the kernel runs on donated steps
    plain = gx.make_step(opt, donate=False, fused=False)
    p = tree(shift=1.0)
    s = opt.init(p)
    hlo = jax.jit(fused).lower(tree(), s, p).as_text()
    assert hlo.count(kernel.TARGET) >= 1, "the step did not call the kernel"
    for _ in range(steps):  # each step from the same inputs, so that differences do not compound
        g = tree(1e-1)
        p2, s2 = plain(g, s, p)
        p1, s1 = fused(g, *jax.tree.map(jnp.copy, (s, p)))
        for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert np.max(np.abs(a - b)) <= ulps * np.spacing(np.float32(np.max(np.abs(b))))
        p, s = p1, s1


def assert_matches_numpy(opt, direction, *, steps: int = 100, rtol: float = 1e-12) -> None:
    """`opt` in float64 follows θ_t = θ_{t-1} + u_t with (u_t, s_t) = direction(t, g_t, s_{t-1},
    θ_{t-1}) per leaf (s_0 = None), a numpy re-derivation, on `make_cube_params` and the
    gradients g_t(θ) = θ - ½ + noise_t."""
    with jax.enable_x64(True):
        params = make_cube_params(jnp.float64)
        noise = make_gradient_noise(params, steps=steps)
        ours, _ = Trajectories.run(
            [Trajectories.stepper(opt, params, gradients_from_noise(noise))], steps)[0]
    p = {k: np.asarray(v) for k, v in params.items() if v is not None}
    state = {k: None for k in p}
    for t in range(1, steps + 1):
        for k in p:
            u, state[k] = direction(t, p[k] - 0.5 + noise[k][t - 1], state[k], p[k])
            p[k] = p[k] + u
            np.testing.assert_allclose(np.asarray(ours[k][t - 1]), p[k], rtol=rtol,
                                       atol=rtol / 10, err_msg=f"{k} at step {t}")
# -- Layer-wise transformations: a tree of a matrix, a vector and a 3-D array, and a loss --------

def make_three_leaf_params(dtype) -> dict:
    """{"w": 4×3 matrix, "b": vector of 3, "k": 2×3×2 array}, drawn from a fixed generator."""
    rng = np.random.default_rng(2)
    return {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype),
            "b": jnp.asarray(rng.normal(size=(3,)), dtype),
            "k": jnp.asarray(rng.normal(size=(2, 3, 2)), dtype)}


def three_leaf_loss(params):
    """Σ_leaves Σ_i sin(3θ_i) θ_i + θ_i⁴ / 10 + (Σ_i θ_k,i)² / 4: not quadratic, and leaf k
    couples its entries, so each gradient depends on where the previous steps went."""
    total = sum(jnp.sum(jnp.sin(3 * x) * x + x**4 / 10) for x in jax.tree.leaves(params))
    return total + jnp.sum(params["k"]) ** 2 / 4


def three_leaf_grad_np(params) -> dict:
    """∇three_leaf_loss in numpy, written out by hand (independent of jax.grad)."""
    grads = {k: np.sin(3 * x) + 3 * x * np.cos(3 * x) + 0.4 * x**3 for k, x in params.items()}
    grads["k"] = grads["k"] + np.sum(params["k"]) / 2
    return grads


def run_on_three_leaf_loss(opts, params, steps: int = 100, *, with_value: bool = False) -> list:
    """The params after each of `steps` steps of every optimizer in `opts` (gradxform or optax)
    on `three_leaf_loss`, from `params`, all in one compiled lax.scan. With `with_value`,
    `update` also gets the loss as `value=` (Polyak step sizes)."""
    def body(carries, _):
        out = []
        for opt, (p, s) in zip(opts, carries):
            value, g = jax.value_and_grad(three_leaf_loss)(p)
            extra = {"value": value} if with_value else {}
            u, s = opt.update(g, s, p, **extra)
            out.append((optax.apply_updates(p, u), s))
        return out, [p for p, _ in out]

    init = [(params, opt.init(params)) for opt in opts]
    return jax.jit(lambda: jax.lax.scan(body, init, None, length=steps)[1])()


def assert_same_as_optax(pairs: dict, *, steps: int = 100, with_value: bool = False) -> None:
    """Each of `pairs` (name -> factory(lib), called with gradxform and with optax) followed
    for `steps` steps on `three_leaf_loss`: the params equal optax's at every step, to 1e-12 in
    float64 and to a few float32 ulps (Trajectories.TOL) in float32, and they moved."""
    names = sorted(pairs)
    for dtype in ("float64", "float32"):
        with jax.enable_x64(dtype == "float64"):
            params = make_three_leaf_params(dtype)
            opts = [pairs[n](lib) for n in names for lib in (gx, optax)]
            runs = run_on_three_leaf_loss(opts, params, steps, with_value=with_value)
            tol = (dict(rtol=1e-12, atol=1e-13) if dtype == "float64"
                   else Trajectories.TOL["float32"])
            for i, name in enumerate(names):
                ours, theirs = runs[2 * i], runs[2 * i + 1]
                assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(ours)), name
                moved = max(float(jnp.max(jnp.abs(x[-1] - x[0]))) for x in jax.tree.leaves(ours))
                assert moved > 1e-2, f"{name}: the params barely moved, the comparison says little"
                Trajectories.assert_close(ours, theirs, tol, f"{name} ({dtype}) ")


@pytest.fixture
def three_leaf():
    """The layer-wise test problem: `.params(dtype)`, `.loss`, `.grad_np`, `.run(opts, params,
    steps=100, with_value=False)` and `.assert_same_as_optax(pairs)` (see the functions
    above)."""
    return types.SimpleNamespace(params=make_three_leaf_params, loss=three_leaf_loss,
                                 grad_np=three_leaf_grad_np, run=run_on_three_leaf_loss,
                                 assert_same_as_optax=assert_same_as_optax)


# -- trajectories recorded from authors' reference code (tests/reference/make_<name>_fixtures.py) --

class AuthorsFixture:
    """`tests/reference/<name>_fixtures.{json,npz}`: the problem (per leaf A, c, x0; the scale s
    and κ), the cases' settings and the recorded trajectories, and the problem's gradient
    ∇L(x) = s (A x + c + κ sin(x)) in float64 rounded to float32, as the fixture scripts
    compute it."""

    def __init__(self, name: str):
        import json
        from pathlib import Path

        reference = Path(__file__).parent / "reference"
        with open(reference / f"{name}_fixtures.json") as f:
            self.meta = json.load(f)
        with np.load(reference / f"{name}_fixtures.npz") as f:
            self.arrays = dict(f)
        self.leaves = self.meta["leaves"]

    def gradient(self, params) -> dict:
        out = {}
        for name in self.leaves:
            x = np.asarray(params[name], np.float64).reshape(-1)
            g = self.meta["scale"] * (self.arrays[f"A/{name}"] @ x + self.arrays[f"c/{name}"]
                                      + self.meta["kappa"] * np.sin(x))
            out[name] = g.reshape(np.shape(params[name])).astype(np.float32)
        return out

    def settings(self, case: str) -> dict:
        s = dict(self.meta["defaults"])
        s.update(self.meta["cases"][case])
        return s
