"""gradxform in the JAX ecosystem: optax both ways, flax TrainState, flax.nnx.Optimizer, equinox.

Each training test runs the same loop once with a gradxform optimizer and once with its optax
twin, both jitted with the hyperparameters as Python constants, and checks that the model
learned and that the two runs agree to float32 rounding.
"""

import pathlib
import re
import subprocess
import sys

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import gradxform as gx
from gradxform._src.interop.optax_interop import from_optax, to_optax

STEPS = 20
# float32, the same operations in another order: a few ulps per step (see
# tests/test_optax_equivalence.py).
RTOL, ATOL = 2e-5, 2e-6
# Adam's steps differ more: optax forms the bias correction 1 - β2^t from β2 in float32, off by
# ulp(β2)/(1 - β2) ≈ 1.3e-5 relative at the first steps (gradxform forms it in double), which is
# ≈ 6e-6 of every early step of size ~lr; over the run that adds up to ~1e-5 of the params.
ADAM_RTOL, ADAM_ATOL = 2e-5, 2e-5


def _data():
    x = jax.random.normal(jax.random.key(1), (32, 2))
    return x, jnp.sin(x[:, :1]) * x[:, 1:]


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"w": jax.random.normal(k1, (3, 2)), "b": jax.random.normal(k2, (2,))}


def _loss(p, x):
    return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)


def _run(opt, apply, params, steps=STEPS):
    """`steps` jitted steps on a fixed toy loss; the params after each step."""
    x = jax.random.normal(jax.random.key(2), (8, 3))

    def body(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(_loss)(p, x), s, p)
        p = apply(p, u)
        return (p, s), p

    return jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), None, length=steps)[1])(params)


def _assert_trees_close(a, b, rtol=RTOL, atol=ATOL):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _moved(trajectory):
    return max(float(jnp.max(jnp.abs(t[-1] - t[0]))) for t in jax.tree.leaves(trajectory))


# -- optax inside gradxform -----------------------------------------------------------------------


def test_from_optax_inside_a_chain_equals_the_optax_chain():
    ours = gx.chain(from_optax(optax.clip_by_global_norm(0.5)), gx.trace(0.9),
                    gx.scale_by_learning_rate(0.05))
    theirs = optax.chain(optax.clip_by_global_norm(0.5), optax.trace(0.9), optax.scale(-0.05))
    a = _run(ours, gx.apply_updates, _params())
    b = _run(theirs, optax.apply_updates, _params())
    assert _moved(a) > 0.1
    _assert_trees_close(a, b)


def test_from_optax_keeps_optax_state_and_numbers():
    tx = optax.adam(0.05)
    wrapped = from_optax(tx)
    params = _params()
    assert jax.tree.structure(wrapped.init(params)) == jax.tree.structure(tx.init(params))
    _assert_trees_close(_run(wrapped, gx.apply_updates, params),
                        _run(tx, optax.apply_updates, params), rtol=0, atol=0)


def test_from_optax_passes_extra_arguments_to_optax_transformations_that_take_them():
    def update_scaled(updates, state, params=None, *, scale=1.0, **extra):
        return jax.tree.map(lambda g: scale * g, updates), state

    extra = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update_scaled)
    plain = optax.scale(3.0)  # a GradientTransformation: extra arguments are dropped for it
    params = _params()
    opt = gx.chain(from_optax(extra), from_optax(plain))
    updates, _ = opt.update(params, opt.init(params), params, scale=2.0)
    _assert_trees_close(updates, jax.tree.map(lambda p: 6.0 * p, params), rtol=1e-7, atol=0)


def test_from_optax_reads_injected_hyperparameters():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.05)
    opt = gx.chain(from_optax(tx), gx.scale(1.0))
    state = opt.init(_params())
    values = gx.hyperparams(opt, state)["from_optax"]
    assert float(values["learning_rate"]) == pytest.approx(0.05)
    assert float(values["b1"]) == pytest.approx(0.9)


def test_from_optax_is_static_data_with_a_readable_repr():
    tx = optax.adam(0.05)
    opt = from_optax(tx)
    assert repr(opt) == "from_optax(optax.chain)"
    assert repr(from_optax(optax.scale_by_adam())) == "from_optax(optax.scale_by_adam)"
    assert opt == from_optax(tx) and hash(opt) == hash(from_optax(tx))
    assert jax.tree.leaves(opt) == []
    # As an argument of a jitted step it is part of the cache key, not a traced value.
    step = jax.jit(lambda o, g, s: o.update(g, s)[0])
    step(opt, _params(), opt.init(_params()))


def test_from_optax_refuses_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="from_optax: tx must be an optax.GradientTransformation"):
        from_optax(optax.adam)  # the factory, not the transformation


# -- gradxform inside optax -----------------------------------------------------------------------


def test_a_gradxform_optimizer_is_a_step_of_an_optax_chain():
    ours = optax.chain(optax.clip_by_global_norm(0.5), gx.adam(0.05))
    theirs = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(0.05))
    _assert_trees_close(_run(ours, optax.apply_updates, _params()),
                        _run(theirs, optax.apply_updates, _params()), ADAM_RTOL, ADAM_ATOL)


@pytest.mark.parametrize("wrap", [
    lambda tx: optax.MultiSteps(tx, every_k_schedule=3),
    lambda tx: optax.apply_if_finite(tx, max_consecutive_errors=2),
    lambda tx: optax.masked(tx, {"w": True, "b": False}),
    lambda tx: optax.with_extra_args_support(tx),
], ids=["MultiSteps", "apply_if_finite", "masked", "with_extra_args_support"])
def test_optax_wrappers_take_a_gradxform_optimizer(wrap):
    a = _run(wrap(gx.adam(0.05)), optax.apply_updates, _params())
    b = _run(wrap(optax.adam(0.05)), optax.apply_updates, _params())
    assert _moved(a) > 0.05
    _assert_trees_close(a, b, ADAM_RTOL, ADAM_ATOL)


def test_optax_tree_utils_read_a_gradxform_state():
    opt = gx.adam(0.05)
    params = _params()
    state = opt.init(params)
    _, state = opt.update(params, state, params)
    counts = optax.tree_utils.tree_get_all_with_path(state, "count")
    assert [int(c) for _, c in counts] == [1, 1]
    mu = optax.tree_utils.tree_get(state, "mu")
    assert jax.tree.structure(mu) == jax.tree.structure(params)


def test_to_optax_gives_optax_own_namedtuple():
    opt = gx.adamw(0.05)
    tx = to_optax(opt)
    assert isinstance(tx, optax.GradientTransformation)
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    assert optax.with_extra_args_support(tx) is tx
    _assert_trees_close(_run(tx, optax.apply_updates, _params()),
                        _run(opt, gx.apply_updates, _params()), rtol=0, atol=0)
    with pytest.raises(TypeError, match="to_optax: transformation must be a transformation"):
        to_optax(optax.adam)


def test_importing_gradxform_imports_no_optional_library():
    code = (
        "import sys, gradxform, gradxform._src.interop.optax_interop, gradxform.checkpoint\n"
        "import gradxform.sharding\n"
        "loaded = {'optax', 'flax', 'equinox', 'orbax'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert out.stdout.strip() == "[]"


# -- flax -----------------------------------------------------------------------------------------


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(jnp.tanh(nn.Dense(8)(x)))


def _train_linen(tx):
    x, y = _data()
    model = _LinenMLP()
    state = train_state.TrainState.create(
        apply_fn=model.apply, params=model.init(jax.random.key(0), x), tx=tx)

    @jax.jit
    def step(state):
        def loss(params):
            return jnp.mean((state.apply_fn(params, x) - y) ** 2)

        value, grads = jax.value_and_grad(loss)(state.params)
        return state.apply_gradients(grads=grads), value

    losses = []
    for _ in range(STEPS):
        state, value = step(state)
        losses.append(float(value))
    return state, losses


def test_flax_train_state_trains_with_a_gradxform_optimizer():
    ours, losses = _train_linen(gx.adam(3e-2))
    theirs, their_losses = _train_linen(optax.adam(3e-2))
    assert losses[-1] < 0.5 * losses[0]
    assert int(ours.step) == STEPS
    _assert_trees_close(ours.params, theirs.params, ADAM_RTOL, ADAM_ATOL)
    np.testing.assert_allclose(losses, their_losses, rtol=ADAM_RTOL, atol=ADAM_ATOL)


class _NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(2, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def _train_nnx(tx):
    x, y = _data()
    model = _NnxMLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        value, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return value

    losses = [float(step(model, optimizer)) for _ in range(STEPS)]
    return model, optimizer, losses


def test_nnx_optimizer_trains_with_a_gradxform_optimizer():
    ours, optimizer, losses = _train_nnx(gx.adamw(3e-2, weight_decay=1e-3))
    theirs, _, their_losses = _train_nnx(optax.adamw(3e-2, weight_decay=1e-3))
    assert losses[-1] < 0.5 * losses[0]
    assert int(optimizer.step[...]) == STEPS
    _assert_trees_close(nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param), ADAM_RTOL,
                        ADAM_ATOL)
    np.testing.assert_allclose(losses, their_losses, rtol=ADAM_RTOL, atol=ADAM_ATOL)


# -- equinox --------------------------------------------------------------------------------------


def _train_equinox(opt):
    x, y = _data()
    model = eqx.nn.MLP(2, 1, width_size=8, depth=1, activation=jnp.tanh, key=jax.random.key(0))
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        def loss(m):
            return jnp.mean((jax.vmap(m)(x) - y) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, value

    losses = []
    for _ in range(STEPS):
        model, state, value = step(model, state)
        losses.append(float(value))
    return model, losses


def test_equinox_filter_loop_trains_with_a_gradxform_optimizer():
    ours, losses = _train_equinox(gx.adam(3e-2))
    theirs, their_losses = _train_equinox(optax.adam(3e-2))
    assert losses[-1] < 0.5 * losses[0]
    _assert_trees_close(eqx.filter(ours, eqx.is_array), eqx.filter(theirs, eqx.is_array),
                        ADAM_RTOL, ADAM_ATOL)
    np.testing.assert_allclose(losses, their_losses, rtol=ADAM_RTOL, atol=ADAM_ATOL)


# -- the README's snippets ------------------------------------------------------------------------


def test_the_readme_snippets_run():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Using gradxform with flax, equinox and optax", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 6
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert int(namespace["state"].step) == 1  # the TrainState took its step
    assert namespace["restored"]["optimizer"] == namespace["like"]["optimizer"]
    assert tuple(namespace["opt_state"][0].mu["w"].sharding.spec)[0] == "data"
