"""Live hyperparameters: any numeric hyperparameter is a float, an array or a schedule, readable
with `gradxform.hyperparams`, changeable between steps without recompiling or resetting the
moments, and sweepable with `jax.vmap`. Trajectories are checked against numpy re-derivations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradxform as gx

# a small least-squares model: params {"w": (4, 1), "b": (1,)}
X = np.asarray(jax.random.normal(jax.random.key(0), (32, 4)), np.float32)
Y = (X @ np.array([[1.0], [-2.0], [0.5], [3.0]]) + 0.3).astype(np.float32)
PARAMS = {"w": jnp.full((4, 1), 0.1, jnp.float32), "b": jnp.zeros((1,), jnp.float32)}


def loss(params, x=X, y=Y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def numpy_grads(p):
    r = X.astype(np.float64) @ p["w"] + p["b"] - Y
    return {"w": 2 * X.T.astype(np.float64) @ r / len(X), "b": 2 * r.sum(0) / len(X)}


def _step(opt, params, state):
    grads = jax.grad(loss)(params)
    updates, state = opt.update(grads, state, params)
    return gx.apply_updates(params, updates), state


step = jax.jit(_step)  # the optimizer is an argument: it is data


def numpy_adamw(params, lrs, wds, b1s, b2=0.999, eps=1e-8):
    """AdamW in float64 with per-step η_t, λ_t, β1_t (bias correction 1 - β1_t^t)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (lr, wd, b1) in enumerate(zip(lrs, wds, b1s), start=1):
        g = numpy_grads(p)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            direction = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            p[k] = p[k] - lr * (direction + wd * p[k])
    return p


def assert_params_close(got, want, rtol=1e-5):
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=rtol, atol=1e-6)


# -- read -------------------------------------------------------------------------------------


def test_hyperparams_is_a_nested_dict_inside_and_outside_jit():
    opt = gx.adamw(gx.linear_schedule(1e-3, 0.0, 100), weight_decay=1e-4)
    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(5):
        params, state = step(opt, params, state)
    want = {
        "scale_by_adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0},
        "add_decayed_weights": {"weight_decay": 1e-4},
        "scale_by_learning_rate": {"learning_rate": 0.00095},  # 1e-3 (1 - 5/100), for update 6
    }
    outside = gx.hyperparams(opt, state)
    inside = jax.jit(gx.hyperparams)(opt, state)
    for got in (outside, inside):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    assert outside["scale_by_adam"]["b1"] == 0.9  # plain numbers come back as given
    assert isinstance(inside["scale_by_adam"]["b1"], jax.Array)


def test_hyperparams_for_logging_inside_the_jitted_step():
    opt = gx.adamw(gx.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100), weight_decay=1e-2)

    @jax.jit
    def logged_step(opt, params, state):
        lr = gx.hyperparams(opt, state)["scale_by_learning_rate"]["learning_rate"]
        params, state = step(opt, params, state)
        return params, state, lr

    params, state, lrs = PARAMS, opt.init(PARAMS), []
    for _ in range(15):
        params, state, lr = logged_step(opt, params, state)
        lrs.append(lr)
    t = np.arange(15)
    cosine = 1e-3 * 0.5 * (1 + np.cos(np.pi * np.clip(t - 10, 0, 90) / 90))
    np.testing.assert_allclose(lrs, np.where(t < 10, 1e-3 * t / 10, cosine), rtol=1e-6)


# -- change between steps -------------------------------------------------------------------------


def numpy_warmup_cosine(t, init, peak, warmup, total):
    t = np.asarray(t, np.float64)
    cosine = peak * 0.5 * (1 + np.cos(np.pi * np.clip(t - warmup, 0, total - warmup)
                                      / (total - warmup)))
    return np.where(t < warmup, init + (peak - init) * t / warmup, cosine)


def test_changing_hyperparameters_reuses_the_compiled_step_and_keeps_the_moments():
    local_step = jax.jit(lambda opt, params, state: _step(opt, params, state))
    # three learning rates and weight decays: one compilation
    phases = [(1e-2, 1e-4), (3e-2, 1e-1), (5e-3, 0.0)]
    params, state = PARAMS, gx.adamw(1e-2, weight_decay=1e-4).init(PARAMS)
    lrs, wds = [], []
    for lr, wd in phases:
        for _ in range(3):
            params, state = local_step(gx.adamw(lr, weight_decay=wd), params, state)
        lrs, wds = lrs + [lr] * 3, wds + [wd] * 3
    assert local_step._cache_size() == 1
    # the learning rate becomes a schedule: the state has the same structure, so it carries on;
    # the new optimizer structure compiles once, and a second schedule of that structure reuses it
    first = gx.warmup_cosine_decay_schedule(0.0, 2e-2, 2, 20)
    second = gx.warmup_cosine_decay_schedule(1e-3, 5e-3, 4, 30)
    for schedule in (first, second):
        for _ in range(3):
            params, state = local_step(gx.adamw(schedule, weight_decay=1e-2), params, state)
        wds += [1e-2] * 3
    assert local_step._cache_size() == 2
    lrs += list(numpy_warmup_cosine([9, 10, 11], 0.0, 2e-2, 2, 20))
    lrs += list(numpy_warmup_cosine([12, 13, 14], 1e-3, 5e-3, 4, 30))
    assert all(int(s.count) == 15 for s in state)
    assert_params_close(params, numpy_adamw(PARAMS, lrs, wds, [0.9] * 15))


def test_a_python_float_and_an_array_of_the_same_value_are_one_structure():
    opt_float, opt_array = gx.adamw(1e-3), gx.adamw(jnp.asarray(1e-3))
    assert jax.tree.structure(opt_float) == jax.tree.structure(opt_array)


# -- the state does not depend on the form of a hyperparameter ---------------------------------


def test_state_structure_is_the_same_for_float_array_and_schedule():
    forms = [1e-3, jnp.asarray(1e-3), np.float32(1e-3), gx.linear_schedule(1e-3, 0.0, 100),
             gx.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100), lambda count: 1e-3]
    states = [gx.adamw(lr, weight_decay=wd).init(PARAMS) for lr in forms
              for wd in (1e-4, gx.exponential_decay(1e-4, 10, 0.5))]
    shapes = [jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), s) for s in states]
    assert all(jax.tree.structure(s) == jax.tree.structure(states[0]) for s in states)
    assert all(s == shapes[0] for s in shapes)


# -- any numeric hyperparameter, with one mechanism -----------------------------------------------

OPTIMIZERS = {
    "adamw": lambda: gx.adamw(1e-2, weight_decay=1e-2),
    "sgd_nesterov": lambda: gx.sgd(1e-2, 0.9, nesterov=True, weight_decay=1e-3),
    "rmsprop": lambda: gx.rmsprop(1e-2, centered=True, momentum=0.5),
    "lion": lambda: gx.lion(1e-3, weight_decay=1e-2),
    "clipped_adam": lambda: gx.chain(gx.clip_by_global_norm(0.5), gx.adam(1e-2)),
}


# initial values of buffers are read by init, before there is a step count to evaluate at
_READ_BY_INIT = ("initial_scale", "initial_accumulator_value")


def _as_schedules(opt):
    """Every Python-float hyperparameter replaced by a schedule that returns it as an array."""
    def replace(path, x):
        if isinstance(x, float) and path[-1].name not in _READ_BY_INIT:
            return gx.linear_schedule(x, x, 1)
        return x

    return jax.tree_util.tree_map_with_path(replace, opt)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_float_hyperparameter_can_be_a_schedule(name):
    opt = OPTIMIZERS[name]()
    scheduled = _as_schedules(opt)
    assert jax.tree.leaves(opt) != jax.tree.leaves(scheduled)  # the replacement happened

    def run(opt):
        params, state = PARAMS, opt.init(PARAMS)
        for _ in range(3):
            updates, state = opt.update(jax.grad(loss)(params), state, params)
            params = gx.apply_updates(params, updates)
        return params, state

    (p_float, s_float), (p_sched, s_sched) = run(opt), run(scheduled)
    assert jax.tree.structure(s_float) == jax.tree.structure(s_sched)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 p_float, p_sched)


def test_scheduled_b1_and_weight_decay():
    b1 = gx.linear_schedule(0.5, 0.9, 8)
    wd = gx.exponential_decay(1e-1, 4, 0.5)
    lr = gx.cosine_decay_schedule(2e-2, 12)
    opt = gx.chain(gx.scale_by_adam(b1=b1), gx.add_decayed_weights(wd),
                   gx.scale_by_learning_rate(lr))
    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(12):
        params, state = step(opt, params, state)
    t = np.arange(12)
    b1s = 0.5 + 0.4 * np.minimum(t, 8) / 8
    wds = 1e-1 * 0.5 ** (t / 4)
    lrs = 2e-2 * 0.5 * (1 + np.cos(np.pi * t / 12))
    assert_params_close(params, numpy_adamw(PARAMS, lrs, wds, b1s))
    hp = gx.hyperparams(opt, state)
    np.testing.assert_allclose(hp["scale_by_adam"]["b1"], 0.9, rtol=1e-6)
    np.testing.assert_allclose(hp["add_decayed_weights"]["weight_decay"], 1e-1 * 0.5**3,
                               rtol=1e-6)


def test_scheduled_momentum_and_clipping_threshold():
    # SGD with heavy-ball momentum μ_t (torch's buffer: v_1 = g_1) after clipping at c_t
    mu = gx.linear_schedule(0.0, 0.9, 5)
    c = gx.piecewise_constant_schedule(0.5, {4: 4.0})
    opt = gx.chain(gx.clip_by_global_norm(c), gx.sgd(1e-2, mu))
    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(8):
        params, state = step(opt, params, state)
    p = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
    buf = None
    for t in range(8):
        g = numpy_grads(p)
        norm = np.sqrt(sum((x**2).sum() for x in g.values()))
        ct, mut = (0.5 if t < 4 else 2.0), 0.9 * min(t, 5) / 5
        g = {k: x * ct / max(norm, ct) for k, x in g.items()}
        buf = g if buf is None else {k: mut * buf[k] + g[k] for k in g}
        p = {k: p[k] - 1e-2 * buf[k] for k in p}
    assert_params_close(params, p)


# -- sweep -----------------------------------------------------------------------------------------


def _train(opt, steps=20):
    def body(carry, _):
        params, state = carry
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return (gx.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (PARAMS, opt.init(PARAMS)), None, length=steps)
    return params


def test_vmap_over_learning_rates_trains_one_copy_per_value():
    lrs = jnp.array([1e-3, 3e-3, 1e-2, 3e-2], jnp.float32)
    # build the optimizer inside the vmapped function ...
    swept = jax.jit(jax.vmap(lambda lr: _train(gx.adamw(lr, weight_decay=1e-2))))(lrs)
    # ... or pass it in, with in_axes from one line: batched leaves are the ones with an axis
    opt = gx.adamw(lrs, weight_decay=1e-2)
    in_axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, opt)
    passed = jax.jit(jax.vmap(_train, in_axes=(in_axes,)))(opt)
    single = jax.jit(_train)
    for i, lr in enumerate(lrs.tolist()):
        alone = single(gx.adamw(jnp.float32(lr), weight_decay=1e-2))
        for batch in (swept, passed):
            copy = jax.tree.map(lambda x, i=i: x[i], batch)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         copy, alone)
    assert single._cache_size() == 1
    want = numpy_adamw(PARAMS, [3e-2] * 20, [1e-2] * 20, [0.9] * 20)
    assert_params_close(jax.tree.map(lambda x: x[3], swept), want)


def test_vmap_over_a_schedule_peak():
    peaks = jnp.array([1e-3, 1e-2], jnp.float32)
    opt = gx.adamw(gx.warmup_cosine_decay_schedule(0.0, peaks, 5, 20), weight_decay=0.0)
    in_axes = jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, opt)
    swept = jax.jit(jax.vmap(_train, in_axes=(in_axes,)))(opt)
    t = np.arange(20)
    for i, peak in enumerate([1e-3, 1e-2]):
        lrs = np.where(t < 5, peak * t / 5, peak * 0.5 * (1 + np.cos(np.pi * (t - 5) / 15)))
        assert_params_close(jax.tree.map(lambda x, i=i: x[i], swept),
                            numpy_adamw(PARAMS, lrs, [0.0] * 20, [0.9] * 20))


# -- reading what was built: names and nesting ----------------------------------------------------


def test_hyperparams_names_a_nested_chain_by_its_members():
    """adamw chained after a clip: its entries are named by what they are, not nested under
    a key 'chain'."""
    opt = gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-3), gx.scale(0.5), gx.scale(2.0))
    read = gx.hyperparams(opt, opt.init(PARAMS))
    assert list(read) == ["clip_by_global_norm", "scale_by_adam", "add_decayed_weights",
                          "scale_by_learning_rate", "scale", "scale_1"]
    assert read["scale_by_learning_rate"] == {"learning_rate": 1e-3}
    assert read["scale_1"] == {"step_size": 2.0}


def test_hyperparams_recurses_into_the_children_of_a_user_written_wrapper():
    from typing import Any, NamedTuple

    class TwoState(NamedTuple):
        count: Any
        inner_state: Any
        extra_state: Any

    @gx.pytree_dataclass
    class alternate(gx.Transformation):
        """Odd steps with `inner`, even steps with `extra` (both keep their state)."""
        mix: float = gx.hyperparameter(0.5)
        inner: Any = gx.child()
        extra: Any = gx.child()

        def init(self, params):
            return TwoState(jnp.zeros([], jnp.int32), self.inner.init(params),
                            self.extra.init(params))

        def update(self, updates, state, params=None, **extra_args):
            a, sa = self.inner.update(updates, state.inner_state, params)
            b, sb = self.extra.update(updates, state.extra_state, params)
            return a, TwoState(gx.safe_increment(state.count), sa, sb)

    lr = gx.linear_schedule(1e-2, 0.0, 10)
    opt = alternate(mix=gx.linear_schedule(0.5, 1.0, 10), inner=gx.adam(lr), extra=gx.sgd(0.1))
    state = opt.init(PARAMS)
    for _ in range(4):
        state = opt.update(PARAMS, state, PARAMS)[1]
    read = gx.hyperparams(opt, state)
    # each schedule is read at its own transformation's step count: 4 steps taken
    np.testing.assert_allclose(read["mix"], 0.5 + 0.5 * 4 / 10, rtol=1e-6)
    np.testing.assert_allclose(read["inner"]["scale_by_learning_rate"]["learning_rate"],
                               1e-2 * (1 - 4 / 10), rtol=1e-6)
    assert read["extra"] == {"scale_by_learning_rate": {"learning_rate": 0.1}}
    assert gx.get_state(opt, state, "inner/scale_by_adam").count == 4
    # the wrapper in the README: its inner transformation under the field's name
    cautious_like = gx.schedule_free_sgd(0.1)
    assert "base_optimizer" in gx.hyperparams(cautious_like, cautious_like.init(PARAMS))
