"""AdaBelief, Yogi and Adan: optax's trajectories, the equations re-derived in numpy, bf16 params.

Trajectories are 100 steps on a non-quadratic loss, so each gradient depends on where the
previous steps went and a wrong update shows up in every later step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform._src.fast import fusion, kernel

STEPS = 100


def _loss(p):
    return (jnp.sum(jnp.sin(3.0 * p["w"]) * p["w"]) + jnp.sum((p["b"] - 0.5) ** 4)
            + jnp.cos(p["c"]) * jnp.sum(p["w"] ** 2) / 10)


def _grad_np(p):
    """∇_loss in numpy, written out by hand (independent of jax.grad)."""
    w, b, c = p["w"], p["b"], p["c"]
    return {"w": np.sin(3 * w) + 3 * w * np.cos(3 * w) + np.cos(c) * w / 5,
            "b": 4 * (b - 0.5) ** 3,
            "c": -np.sin(c) * np.sum(w**2) / 10}


def _grads(p, t):
    g = jax.grad(lambda q: _loss({k: v for k, v in q.items() if v is not None}))(p)
    return {**g, "n": None}


def _params(dtype):
    rng = np.random.RandomState(0)
    return {"w": jnp.asarray(rng.randn(4, 3), dtype), "b": jnp.asarray(rng.randn(3), dtype),
            "c": jnp.asarray(rng.randn(), dtype), "n": None}


# name -> (gradxform factory, optax factory), the same arguments on both sides. A direction
# alone (scale_by_*) is followed with small descent steps.
def _descend(direction):
    return lambda lib: lib.chain(direction(lib), lib.scale(-0.01))


PAIRS = {
    "scale_by_belief": _descend(lambda lib: lib.scale_by_belief()),
    "scale_by_belief_nesterov": _descend(
        lambda lib: lib.scale_by_belief(0.8, b2=0.99, eps=1e-8, eps_root=1e-10, nesterov=True)),
    "scale_by_yogi": _descend(lambda lib: lib.scale_by_yogi()),
    "scale_by_yogi_args": _descend(lambda lib: lib.scale_by_yogi(
        0.8, b2=0.99, eps=1e-4, eps_root=1e-8, initial_accumulator_value=0.5)),
    "scale_by_adan": _descend(lambda lib: lib.scale_by_adan()),
    "scale_by_adan_args": _descend(
        lambda lib: lib.scale_by_adan(0.9, b2=0.8, b3=0.999, eps=1e-6, eps_root=1e-9)),
    "adabelief": lambda lib: lib.adabelief(0.01),
    "adabelief_nesterov": lambda lib: lib.adabelief(0.01, nesterov=True),
    "yogi": lambda lib: lib.yogi(0.02),
    "adan": lambda lib: lib.adan(0.01),
    "adan_weight_decay_mask": lambda lib: lib.adan(
        0.01, weight_decay=0.05, mask={"w": True, "b": False, "c": True, "n": False}),
}
def _trajectory_pair(trajectories, make, dtype):
    params = _params(dtype)
    ours, theirs = make(gx), make(optax)
    (ours_ps, _), (theirs_ps, _) = trajectories.run(
        [trajectories.stepper(ours, params, _grads), trajectories.stepper(theirs, params, _grads)],
        STEPS)
    return ours_ps, theirs_ps


def _err(a, b):
    """Largest error over the trajectory, relative to the size of each leaf."""
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))
                     / np.max(np.abs(np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_same_trajectories_as_optax(name, trajectories):
    with jax.enable_x64(True):
        ours64, exact = _trajectory_pair(trajectories, PAIRS[name], jnp.float64)
        assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(ours64))
        moved = max(float(jnp.max(jnp.abs(x[-1] - x[0]))) for x in jax.tree.leaves(ours64))
        assert moved > 1e-2, f"{name}: the params barely moved, the comparison says little"
        trajectories.assert_close(ours64, exact, dict(rtol=1e-12, atol=1e-13), name)
    ours32, optax32 = _trajectory_pair(trajectories, PAIRS[name], jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ours32))
    # float32 is held to the exact (float64) trajectory, within a few ulps per step
    # (Trajectories.TOL["float32"]: rtol 1e-6, atol 5e-7). optax forms the bias corrections
    # 1 - β^t in float32, which cancels for β near 1 (0.999 is stored as 0.99900001) and leaves
    # its float32 trajectories up to ~1e-5 away; gradxform's are no further from the exact one.
    trajectories.assert_close(ours32, exact, "float32", f"{name} (float32 vs exact)")
    assert _err(ours32, exact) <= _err(optax32, exact)


@pytest.mark.parametrize("name", ["adabelief", "yogi", "adan"])
def test_schedule_as_learning_rate(name, trajectories):
    # One schedule, gradxform's, for both: optax's own schedules return float32 for the int32
    # step count even with jax_enable_x64, which would blur a float64 comparison.
    schedule = gx.warmup_cosine_decay_schedule(0.0, 0.03, 10, STEPS, end_value=1e-3)

    def make(lib):
        return getattr(lib, name)(schedule)

    with jax.enable_x64(True):
        ours, theirs = _trajectory_pair(trajectories, make, jnp.float64)
        trajectories.assert_close(ours, theirs, dict(rtol=1e-12, atol=1e-13), name)


# -- the equations, re-derived in numpy (float64) ----------------------------------------------

def _belief_np(b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False):
    def step(t, g, s):
        m, v = s or (0 * g, 0 * g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g - m) ** 2 + eps_root
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        return m_hat / (np.sqrt(v / (1 - b2**t)) + eps), (m, v)
    return step


def _yogi_np(b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, v0=1e-6):
    def step(t, g, s):
        m, v = s or (0 * g + v0, 0 * g + v0)
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * np.sign(v - g**2) * g**2
        return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps), (m, v)
    return step


def _adan_optax_np(b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=0.0):
    """Adan as optax writes it: the difference weighted by 1 - β2."""
    def step(t, g, s):
        m, v, n, g_prev = s or (0 * g, 0 * g, 0 * g, g)  # Δ_1 = 0
        d = g - g_prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * d
        n = b3 * n + (1 - b3) * (g + (1 - b2) * d) ** 2
        u = (m / (1 - b1**t) + (1 - b2) * v / (1 - b2**t))
        return u / (np.sqrt(n / (1 - b3**t) + eps_root) + eps), (m, v, n, g)
    return step


def _adan_authors_np(b1=0.98, b2=0.92, b3=0.99, eps=1e-8):
    """Adan as the authors' PyTorch code (and the paper's Algorithm 1) weights the difference:
    by β2 in the decay convention (the paper's 1 - β2 with β2 = 0.08)."""
    def step(t, g, s):
        exp_avg, exp_avg_diff, exp_avg_sq, pre_grad = s or (0 * g, 0 * g, 0 * g, g)
        diff = g - pre_grad
        exp_avg = b1 * exp_avg + (1 - b1) * g
        exp_avg_diff = b2 * exp_avg_diff + (1 - b2) * diff
        update = g + b2 * diff
        exp_avg_sq = b3 * exp_avg_sq + (1 - b3) * update * update
        denom = np.sqrt(exp_avg_sq) / np.sqrt(1 - b3**t) + eps
        u = (exp_avg / (1 - b1**t) + b2 * exp_avg_diff / (1 - b2**t)) / denom
        return u, (exp_avg, exp_avg_diff, exp_avg_sq, g)
    return step


def _numpy_trajectory(direction, lr, weight_decay=0.0):
    """θ_t = θ_{t-1} - lr (u_t + λ θ_{t-1}) with u_t = direction(t, g_t, state), per leaf."""
    rng = np.random.RandomState(0)  # the same draws as _params
    p = {"w": rng.randn(4, 3), "b": rng.randn(3), "c": np.float64(rng.randn())}
    state = {k: None for k in p}
    out = []
    for t in range(1, STEPS + 1):
        g = _grad_np(p)
        new = {}
        for k in p:
            u, state[k] = direction(t, g[k], state[k])
            new[k] = p[k] - lr * (u + weight_decay * p[k])
        p = new
        out.append(p)
    return out


NUMPY = {
    "adabelief": (lambda: gx.adabelief(0.01), _belief_np(), 0.01, 0.0),
    "adabelief_paper_eps": (lambda: gx.adabelief(0.01, eps=0.0, eps_root=1e-8),
                            _belief_np(eps=0.0, eps_root=1e-8), 0.01, 0.0),
    "adabelief_nesterov": (lambda: gx.adabelief(0.01, b1=0.8, nesterov=True),
                           _belief_np(b1=0.8, nesterov=True), 0.01, 0.0),
    "yogi": (lambda: gx.yogi(0.02), _yogi_np(), 0.02, 0.0),
    "yogi_v0": (lambda: gx.chain(gx.scale_by_yogi(initial_accumulator_value=0.3, eps_root=1e-6),
                                 gx.scale_by_learning_rate(0.02)),
                _yogi_np(v0=0.3, eps_root=1e-6), 0.02, 0.0),
    "adan": (lambda: gx.adan(0.01, weight_decay=0.05), _adan_optax_np(eps_root=1e-8), 0.01, 0.05),
    "adan_authors": (lambda: gx.chain(gx.scale_by_adan(lookahead="paper"),
                                      gx.scale_by_learning_rate(0.01)),
                     _adan_authors_np(), 0.01, 0.0),
}


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_numpy_rederivation(name, trajectories):
    make, direction, lr, weight_decay = NUMPY[name]
    ref = _numpy_trajectory(direction, lr, weight_decay)
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        ours, _ = trajectories.run([trajectories.stepper(make(), params, _grads)], STEPS)[0]
    for k in ("w", "b", "c"):
        np.testing.assert_allclose(np.asarray(ours[k]), np.stack([q[k] for q in ref]),
                                   rtol=1e-12, atol=1e-13, err_msg=f"{name} {k}")


def test_adan_lookahead_forms_differ():
    """The two weights of the gradient difference give different steps (from step 2 on)."""
    ref_optax = _numpy_trajectory(_adan_optax_np(), 0.01)
    ref_authors = _numpy_trajectory(_adan_authors_np(), 0.01)
    np.testing.assert_array_equal(ref_optax[0]["w"], ref_authors[0]["w"])
    assert np.max(np.abs(ref_optax[-1]["w"] - ref_authors[-1]["w"])) > 1e-3


# -- 16-bit params, hyperparameters ------------------------------------------------------------

DIRECTIONS = {"scale_by_belief": lambda: gx.scale_by_belief(),
              "scale_by_yogi": lambda: gx.scale_by_yogi(),
              "scale_by_adan": lambda: gx.scale_by_adan(),
              "adabelief": lambda: gx.adabelief(1e-2),
              "yogi": lambda: gx.yogi(1e-2),
              "adan": lambda: gx.adan(1e-2, weight_decay=1e-2)}


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_bfloat16_params_keep_their_dtype_with_float32_buffers(name):
    """bf16 params get float32 buffers, updated in float32 from the widened gradients."""
    opt = DIRECTIONS[name]()
    p16 = {k: v for k, v in _params(jnp.bfloat16).items() if v is not None}
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)
    s16, s32 = opt.init(p16), opt.init(p32)
    buffers = [x for x in jax.tree.leaves(s16) if jnp.ndim(x) > 0]
    assert buffers and all(x.dtype == jnp.float32 for x in buffers)
    update = jax.jit(opt.update)
    for t in range(5):
        g16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _grads(p32, t))
        g16 = {k: v for k, v in g16.items() if v is not None}
        u16, s16 = update(g16, s16, p16)
        u32, s32 = update(jax.tree.map(lambda x: x.astype(jnp.float32), g16), s32, p32)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(u16))
        # The buffers follow the float32 run to float32 rounding (XLA may contract the two
        # programs' multiply-adds differently), not to bfloat16's 3 digits; the update is that
        # float32 computation rounded once to bfloat16 (within one bfloat16 ulp, 2^-8).
        for a, b in zip(jax.tree.leaves(s16), jax.tree.leaves(s32)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        if name.startswith("scale_by"):
            for a, b in zip(jax.tree.leaves(u16), jax.tree.leaves(u32)):
                np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b),
                                           rtol=2**-8, atol=1e-7)
        p16 = gx.apply_updates(p16, u16)
        p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(p16))


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_donating_step_gives_the_numbers_of_update_and_apply(name):
    """make_step donates params and state: every buffer must be its own array (one tree of
    zeros shared by two buffers cannot be donated twice), and the step keeps the numbers."""
    opt = DIRECTIONS[name]()
    params = {k: v for k, v in _params(jnp.float32).items() if v is not None}
    reference = jax.jit(gx.update_and_apply)
    step = gx.make_step(opt)
    p_ref, s_ref = params, opt.init(params)
    p, s = jax.tree.map(jnp.copy, params), opt.init(params)
    for t in range(3):
        g = {k: v for k, v in _grads(p_ref, t).items() if v is not None}
        p_ref, s_ref = reference(opt, g, s_ref, p_ref)
        p, s = step(g, s, p)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((p_ref, s_ref))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.skipif(not kernel.available(),
                    reason=f"the vector kernel does not run here: {kernel.status()}")
@pytest.mark.parametrize("name", ["adabelief_nesterov", "yogi", "adan", "adan_paper"])
def test_vector_kernel_runs_them_with_the_numbers_of_the_xla_program(name):
    """The fast path traces each element equation into the kernel's register program; its
    results are those of the XLA program up to where XLA contracts a product and a sum."""
    opt = {"adabelief_nesterov": lambda: gx.adabelief(1e-2, nesterov=True),
           "yogi": lambda: gx.yogi(1e-2),
           "adan": lambda: gx.adan(1e-2, weight_decay=1e-2),
           "adan_paper": lambda: gx.adan(1e-2, lookahead="paper")}[name]()
    rng = np.random.default_rng(0)
    sizes = (70_001, 1 << 14, 10)  # the last leaf is below the kernel's threshold

    def tree(scale=1.0):
        return {f"l{i}": jnp.asarray(scale * rng.normal(size=n), jnp.float32)
                for i, n in enumerate(sizes)}

    members = [t for t, _ in fusion.flat_members(opt, opt.init({"w": jnp.zeros(3)}))]
    runs = fusion.runs(members)
    assert runs and runs[-1][1] == len(members), (
        f"{opt!r} does not end in a run of ElementwiseTransformations: make_step would run it "
        f"through XLA and this test would compare XLA with itself")
    fused = gx.make_step(opt)  # the kernel runs on donated steps
    plain = gx.make_step(opt, donate=False, fused=False)
    p = tree()
    s = opt.init(p)
    hlo = jax.jit(fused).lower(tree(), s, p).as_text()
    assert hlo.count(kernel.TARGET) >= 1, "the step did not call the kernel"
    for _ in range(4):  # each step from the same inputs, so that differences do not compound
        g = tree(1e-2)
        p2, s2 = plain(g, s, p)
        p1, s1 = fused(g, *jax.tree.map(jnp.copy, (s, p)))
        for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            # Within 4 ulp of the leaf's largest value. Where XLA fuses a multiply-add, a sum
            # (β m + (1 - β) g, θ - η u) differs by an ulp of its terms, as for Adam (2 ulp);
            # the second moments here square a quantity built from such a sum (g - m_t,
            # g + w Δ), which doubles its relative difference, then add it to β s: up to 4.
            assert np.max(np.abs(a - b)) <= 4 * np.spacing(np.float32(np.max(np.abs(b))))
        p, s = p1, s1


def test_hyperparameters_are_leaves_and_arrays_give_the_same_numbers(trajectories):
    opt = gx.scale_by_adan(0.9, b2=0.8, b3=0.95, eps=1e-6, eps_root=1e-9)
    assert jax.tree.leaves(opt) == [0.9, 0.8, 0.95, 1e-6, 1e-9]
    with jax.enable_x64(True):
        as_arrays = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), opt)
        p = {k: v for k, v in _params(jnp.float64).items() if v is not None}
        grads = lambda p, t: jax.grad(_loss)(p)  # noqa: E731
        (a, _), (b, _) = trajectories.run(
            [trajectories.stepper(gx.chain(opt, gx.scale(-0.01)), p, grads),
             trajectories.stepper(gx.chain(as_arrays, gx.scale(-0.01)), p, grads)], 20)
        trajectories.assert_close(a, b, "float64")


def test_state_field_names():
    p = {"w": jnp.ones(3)}
    assert gx.scale_by_belief().init(p)._fields == ("count", "mu", "nu")
    assert gx.scale_by_yogi().init(p)._fields == ("count", "mu", "nu")
    assert gx.scale_by_adan().init(p)._fields == ("count", "m", "v", "n", "prev_grad")
    np.testing.assert_array_equal(gx.scale_by_yogi(initial_accumulator_value=0.25).init(p).nu["w"],
                                  np.full(3, 0.25, np.float32))


BAD = [
    (lambda: gx.scale_by_belief(b1=1.0), "scale_by_belief: b1 must be in [0, 1), got 1.0"),
    (lambda: gx.scale_by_belief(b2=-0.1), "scale_by_belief: b2 must be in [0, 1), got -0.1"),
    (lambda: gx.scale_by_belief(eps=-1e-8), "scale_by_belief: eps must be >= 0, got -1e-08"),
    (lambda: gx.scale_by_belief(eps_root=-1.0), "scale_by_belief: eps_root must be >= 0"),
    (lambda: gx.adabelief(0.1, b2=1.5), "scale_by_belief: b2 must be in [0, 1), got 1.5"),
    (lambda: gx.scale_by_yogi(b1=2.0), "scale_by_yogi: b1 must be in [0, 1), got 2.0"),
    (lambda: gx.scale_by_yogi(initial_accumulator_value=-1e-6),
     "scale_by_yogi: initial_accumulator_value must be >= 0, got -1e-06"),
    (lambda: gx.yogi(0.1, eps=-1.0), "scale_by_yogi: eps must be >= 0, got -1.0"),
    (lambda: gx.scale_by_adan(b3=1.0), "scale_by_adan: b3 must be in [0, 1), got 1.0"),
    (lambda: gx.scale_by_adan(eps_root=-1.0), "scale_by_adan: eps_root must be >= 0"),
    (lambda: gx.adan(0.1, b1=-0.5), "scale_by_adan: b1 must be in [0, 1), got -0.5"),
    (lambda: gx.adan(0.1, weight_decay=float("nan")), "weight_decay must be finite"),
    (lambda: gx.scale_by_adan(lookahead="torch"), "scale_by_adan: lookahead must be"),
]


@pytest.mark.parametrize("make, message", BAD, ids=[m for _, m in BAD])
def test_invalid_hyperparameters_are_named(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)
