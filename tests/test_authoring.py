"""Writing your own transformation: the README's worked examples run here (so they cannot go
stale) and are checked against numpy; authoring mistakes get messages that name the fix."""

import pathlib
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx
from gradxform.testing import check_transformation

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def _blocks(heading: str) -> list[str]:
    section = README.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def examples():
    """The namespace of the two worked examples, as the README writes them."""
    namespace: dict = {}
    for heading in ["### Example: gradient centralization", "### Example: a wrapper, cautious "
                    "updates"]:
        (block,) = _blocks(heading)
        exec(compile(block, "README.md", "exec"), namespace)
    return namespace


def test_the_readme_examples_pass_the_conformance_check(examples):
    (block,) = _blocks("### Checking it")
    exec(compile(block, "README.md", "exec"), dict(examples))


def test_gradient_centralization_against_numpy(examples):
    rng = np.random.RandomState(0)
    g = {"w": rng.randn(4, 3), "conv": rng.randn(3, 3, 2, 5), "b": rng.randn(3)}
    for alpha in [1.0, 0.25]:
        t = examples["centralize_gradients"](alpha=alpha)
        with jax.enable_x64(True):
            u, _ = t.update(jax.tree.map(jnp.asarray, g), t.init(g))
        np.testing.assert_allclose(u["w"], g["w"] - alpha * g["w"].mean(0), rtol=1e-12)
        np.testing.assert_allclose(u["conv"], g["conv"] - alpha * g["conv"].mean((0, 1, 2)),
                                   rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(u["b"], g["b"])
    assert np.allclose(np.asarray(u["w"]).mean(0), 0.75 * g["w"].mean(0))
    with pytest.raises(ValueError, match=r"centralize_gradients: alpha must be in \[0, 1\]"):
        examples["centralize_gradients"](alpha=1.5)


def test_cautious_against_numpy(examples):
    rng = np.random.RandomState(1)
    g = {"w": rng.randn(6, 5), "b": rng.randn(5)}
    inner = gx.adamw(1e-2, weight_decay=1e-2)
    opt = examples["cautious"](inner)
    assert repr(opt).startswith("cautious(\n    inner=chain(\n        scale_by_adam(")
    assert eval(repr(opt), {**{n: getattr(gx, n) for n in gx.__all__}, **examples}) == opt
    read = gx.hyperparams(opt, opt.init(g))
    assert read["inner"]["scale_by_learning_rate"] == {"learning_rate": 1e-2}
    with jax.enable_x64(True):
        p = jax.tree.map(jnp.asarray, g)
        state, inner_state = opt.init(p), inner.init(p)
        for t in range(3):
            grads = jax.tree.map(lambda x, t=t: jnp.cos(x + t), p)
            u, state = opt.update(grads, state, p)
            v, inner_state = inner.update(grads, inner_state, p)
            for k in g:
                vk, gk = np.asarray(v[k]), np.asarray(grads[k])
                phi = (vk * gk < 0).astype(np.float64)
                np.testing.assert_allclose(u[k], vk * phi * phi.size / (phi.sum() + 1),
                                           rtol=1e-12, atol=1e-300)
            p = gx.apply_updates(p, u)


# -- authoring mistakes ---------------------------------------------------------------------------


def test_update_returning_one_value_names_the_fix():
    @gx.pytree_dataclass
    class forgets_the_state(gx.Transformation):
        def init(self, params):
            return gx.EmptyState()

        def update(self, updates, state, params=None, **extra_args):
            return updates

    opt = gx.chain(forgets_the_state(), gx.scale(0.5))
    params = {"w": jnp.ones(2)}
    message = (r"forgets_the_state.update must return a pair \(updates, state\), got one value "
               r"\(dict\); end it with `return updates, new_state`")
    with pytest.raises(TypeError, match=message):
        opt.update(params, opt.init(params))
    with pytest.raises(TypeError, match=message):
        jax.jit(opt.update)(params, opt.init(params))


def test_a_class_without_pytree_dataclass_names_the_fix():
    class undecorated(gx.Transformation):
        def init(self, params):
            return gx.EmptyState()

        def update(self, updates, state, params=None, **extra_args):
            return updates, state

    with pytest.raises(TypeError, match=r"undecorated: decorate the class with "
                                        r"@gradxform.pytree_dataclass"):
        undecorated()


def test_the_schedule_check_catches_a_hyperparameter_read_without_at():
    class S(NamedTuple):
        count: Any

    @gx.pytree_dataclass
    class scale_without_at(gx.Transformation):
        factor: float = gx.hyperparameter(0.5)

        def init(self, params):
            return S(jnp.zeros([], jnp.int32))

        def update(self, updates, state, params=None, **extra_args):
            return jax.tree.map(lambda g: self.factor * g, updates), S(state.count + 1)

    with pytest.raises(AssertionError, match=r"update failed with schedules for "
                                             r"scale_without_at.factor .*self.at\(state.count\)"):
        check_transformation(scale_without_at())
    check_transformation(scale_without_at(), schedules=False)


def test_states_holding_typed_prng_keys_are_checked():
    class NoiseState(NamedTuple):
        count: Any
        key: Any

    @gx.pytree_dataclass
    class add_noise(gx.Transformation):
        """g + σ ξ, ξ ~ N(0, 1), a new key each step (Neelakantan et al., 2015)."""
        sigma: float = gx.hyperparameter(0.01)

        def init(self, params):
            return NoiseState(jnp.zeros([], jnp.int32), jax.random.key(0))

        def update(self, updates, state, params=None, **extra_args):
            hp = self.at(state.count)
            key, sub = jax.random.split(state.key)
            leaves, treedef = jax.tree.flatten(updates)
            keys = jax.random.split(sub, max(len(leaves), 1))
            noisy = [g + (hp.sigma * jax.random.normal(k, g.shape)).astype(g.dtype)
                     for g, k in zip(leaves, keys)]
            return treedef.unflatten(noisy), NoiseState(gx.safe_increment(state.count), key)

    check_transformation(add_noise())
