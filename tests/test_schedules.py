"""Schedules against optax, against torch.optim.lr_scheduler fixtures, and against the formulas
of the papers re-derived in numpy; plus their validation, pytree behaviour and plots.

Each schedule is evaluated once over a long range of step counts (step 0, every boundary, far
past the end, the int32 maximum) with one jit of a vmap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
import gradxform.schedules as S

COUNTS = np.concatenate([np.arange(2600), [10**4, 10**5, 10**6, 2**24 + 1, 2**31 - 1]])
COUNTS = COUNTS.astype(np.int32)
FIXTURES = json.loads(
    (Path(__file__).parent / "reference" / "torch_schedule_fixtures.json").read_text()
)


def curve(schedule, counts=COUNTS):
    out = jax.jit(jax.vmap(schedule))(jnp.asarray(counts, jnp.int32))
    return np.broadcast_to(np.asarray(out), np.shape(counts))


# -- optax: same names, same arguments, same values -------------------------------------------

_SGDR = [
    dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100, end_value=0.1),
    dict(init_value=0.1, peak_value=0.5, warmup_steps=0, decay_steps=200),
    dict(init_value=0.0, peak_value=0.25, warmup_steps=50, decay_steps=300, end_value=0.01,
         exponent=2.0),
]

# name -> (schedule name, positional args, keyword args), called the same way in both libraries
OPTAX_CASES = {
    "constant": ("constant_schedule", (0.3,), {}),
    "linear": ("linear_schedule", (1.0, 0.01, 100), {}),
    "linear_begin": ("linear_schedule", (0.0, 2e-3, 300, 50), {}),
    "linear_zero_steps": ("linear_schedule", (0.5, 0.0, 0), {}),
    "polynomial": ("polynomial_schedule", (1.0, 0.01, 2, 100, 5), {}),
    "polynomial_sqrt": ("polynomial_schedule", (3e-4, 1e-5, 0.5, 1000), {}),
    "polynomial_keywords": ("polynomial_schedule", (), dict(
        init_value=1.0, end_value=0.0, power=3, transition_steps=64, transition_begin=7)),
    "exponential": ("exponential_decay", (1.0, 100, 0.5), {}),
    "exponential_staircase": ("exponential_decay", (0.1, 250, 0.3, 30, True), {}),
    "exponential_end_floor": ("exponential_decay", (1e-3, 50, 0.9), dict(
        transition_begin=10, end_value=2e-4)),
    "exponential_growth_end_ceiling": ("exponential_decay", (0.1, 40, 1.5), dict(end_value=3.0)),
    "exponential_zero_rate": ("exponential_decay", (0.2, 10, 0.0), {}),
    "exponential_zero_steps": ("exponential_decay", (0.2, 0, 0.5), {}),
    "piecewise_constant": ("piecewise_constant_schedule", (1.0, {100: 0.1, 200: 0.01}), {}),
    "piecewise_constant_unsorted": (
        "piecewise_constant_schedule", (0.5, {700: 2.0, 0: 0.5, 7: 0.25}), {}),
    "piecewise_constant_none": ("piecewise_constant_schedule", (0.5,), {}),
    "piecewise_linear": (
        "piecewise_interpolate_schedule", ("linear", 1.0, {4: 0.1, 8: 0.01, 1000: 5.0}), {}),
    "piecewise_cosine": (
        "piecewise_interpolate_schedule", ("cosine", 2e-3, {0: 0.5, 300: 0.1, 900: 0.0}), {}),
    "piecewise_interpolate_none": ("piecewise_interpolate_schedule", ("linear", 0.7), {}),
    "cosine": ("cosine_decay_schedule", (1.0, 1000), {}),
    "cosine_alpha_exponent": ("cosine_decay_schedule", (3e-4, 777, 0.1, 2.0), {}),
    "warmup_cosine": ("warmup_cosine_decay_schedule", (0.0, 1.0, 100, 1000, 0.01), {}),
    "warmup_cosine_exponent": (
        "warmup_cosine_decay_schedule", (1e-5, 6e-4, 333, 2000, 6e-5, 3.0), {}),
    "warmup_cosine_no_warmup": ("warmup_cosine_decay_schedule", (0.0, 1.0, 0, 500), {}),
    "warmup_cosine_zero_peak": ("warmup_cosine_decay_schedule", (0.0, 0.0, 10, 500, 0.1), {}),
    "warmup_constant": ("warmup_constant_schedule", (0.0, 1e-3, 100), {}),
    "warmup_exponential": (
        "warmup_exponential_decay_schedule", (0.0, 1.0, 50, 100, 0.5, 20, True, 0.01), {}),
    "warmup_exponential_no_warmup": (
        "warmup_exponential_decay_schedule", (0.0, 1.0, 0, 30, 0.8), {}),
    "sgdr": ("sgdr_schedule", (_SGDR,), {}),
    "cosine_onecycle": ("cosine_onecycle_schedule", (1000, 1.0), {}),
    "cosine_onecycle_args": ("cosine_onecycle_schedule", (1999, 4e-3, 0.25, 10.0, 100.0), {}),
    "cosine_onecycle_tiny": ("cosine_onecycle_schedule", (7, 1.0), {}),
    "linear_onecycle": ("linear_onecycle_schedule", (1000, 1.0), {}),
    "linear_onecycle_args": ("linear_onecycle_schedule", (1234, 0.1, 0.2, 0.9, 5.0, 50.0), {}),
    "linear_onecycle_tiny": ("linear_onecycle_schedule", (3, 1.0), {}),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_matches_optax(case):
    name, args, kwargs = OPTAX_CASES[case]
    ours = getattr(gx, name)(*args, **kwargs)
    theirs = getattr(optax, name)(*args, **kwargs)
    got, want = jax.jit(lambda c: (jax.vmap(ours)(c), jax.vmap(theirs)(c)))(COUNTS)
    got = np.broadcast_to(np.asarray(got), COUNTS.shape)
    want = np.broadcast_to(np.asarray(want), COUNTS.shape)
    assert got.dtype == np.float32
    assert np.isfinite(got).all()
    finite = np.isfinite(want)
    scale = np.abs(want[finite]).max()
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-7 * scale)
    if not finite.all():
        # optax under jit: 1 - T·(1/T) rounds to -5e-8 and (-5e-8)^0.5 is NaN past the end
        assert case == "polynomial_sqrt"
        assert (COUNTS[~finite] >= 1000).all()
        np.testing.assert_array_equal(got[~finite], np.float32(1e-5))


def test_join_schedules_matches_optax():
    ours = gx.join_schedules(
        [gx.linear_schedule(0.0, 1.0, 100), gx.cosine_decay_schedule(1.0, 900, 0.1), 0.1],
        [100, 1000],
    )
    theirs = optax.join_schedules(
        [optax.linear_schedule(0.0, 1.0, 100), optax.cosine_decay_schedule(1.0, 900, 0.1),
         optax.constant_schedule(0.1)],
        [100, 1000],
    )
    np.testing.assert_allclose(curve(ours), curve(theirs), rtol=1e-6, atol=1e-7)


def test_join_schedules_accepts_python_functions_as_static_data():
    warmup = optax.linear_schedule(0.0, 1.0, 10)
    joined = gx.join_schedules([warmup, gx.constant_schedule(1.0)], [10])
    assert jax.tree_util.tree_leaves(joined) == [10, 1.0]
    np.testing.assert_allclose(curve(joined, np.arange(20)),
                               np.minimum(np.arange(20) / 10, 1.0), rtol=1e-6)


def test_a_gradxform_schedule_is_an_optax_schedule():
    opt = optax.sgd(gx.linear_schedule(1.0, 0.0, 10))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    for t in range(3):
        updates, state = opt.update({"w": jnp.full(3, 2.0)}, state)
        np.testing.assert_allclose(updates["w"], -2.0 * (1 - t / 10), rtol=1e-6)


# -- torch.optim.lr_scheduler, recorded by tests/reference/make_torch_schedule_fixtures.py -----

_SCALE_FNS = {"half_sine": lambda x: 0.5 * (1 + jnp.sin(x * jnp.pi / 2))}


def _build(name, args):
    """The gradxform schedule a fixture names; arguments that are schedules are nested specs."""
    args = dict(args)
    if "scale_fn" in args:
        args["scale_fn"] = _SCALE_FNS[args["scale_fn"]]
    if "boundaries_and_scales" in args:  # JSON keys are strings
        args["boundaries_and_scales"] = {int(k): v for k, v in
                                         args["boundaries_and_scales"].items()}
    if "schedules" in args:
        return getattr(gx, name)(*[_build(s["schedule"], s["args"]) for s in args["schedules"]])
    return getattr(gx, name)(**args)


@pytest.mark.parametrize("case", sorted(FIXTURES["cases"]))
def test_matches_torch_lr_scheduler(case):
    fixture = FIXTURES["cases"][case]
    recorded = [("lr", fixture["schedule"], fixture["args"])]
    if "momentum" in fixture:
        recorded.append(("momentum", fixture["momentum_schedule"], fixture["momentum_args"]))
    for key, name, args in recorded:
        want = np.asarray(fixture[key])
        got = curve(_build(name, args), np.arange(len(want)))
        # float32 against torch's float64: a few float32 ulps of the schedule's scale
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                                   err_msg=f"{case}: {key}")


def test_onecycle_schedules_is_the_lr_and_the_momentum():
    fixture = FIXTURES["cases"]["OneCycleLR_three_phase"]
    lr, momentum = gx.onecycle_schedules(0.2, 97, three_phase=True, base_momentum=0.8,
                                         max_momentum=0.9)
    np.testing.assert_allclose(curve(lr, np.arange(97)), fixture["lr"], rtol=1e-6, atol=2e-7)
    np.testing.assert_allclose(curve(momentum, np.arange(97)), fixture["momentum"], rtol=1e-6)
    assert gx.onecycle_schedules(0.2, 97, cycle_momentum=False)[1] is None
    # optax's one-cycle puts the phase boundary at pct_start T, not pct_start T - 1
    optax_form = curve(gx.cosine_onecycle_schedule(97, 0.2), np.arange(97))
    assert not np.allclose(optax_form, curve(gx.onecycle_lr_schedule(0.2, 97), np.arange(97)),
                           rtol=1e-3)


def test_asgd_and_relative_step_formulas():
    t = np.arange(0, 5000, 7)
    np.testing.assert_allclose(curve(gx.asgd_schedule(0.5, lambd=0.1, alpha=0.75), t),
                               0.5 / (1 + 0.1 * 0.5 * t) ** 0.75, rtol=2e-6)
    np.testing.assert_allclose(curve(gx.relative_step_schedule(0.01), t),
                               np.minimum(0.01, 1 / np.sqrt(t + 1)), rtol=2e-6)


def test_periodic_cosine_annealing_at_huge_counts():
    s = gx.periodic_cosine_annealing_schedule(1.0, 7, eta_min=0.1)
    counts = np.array([0, 7, 14, 2**31 - 1 - (2**31 - 1) % 14, 2**31 - 1])
    t = counts % 14
    want = 0.1 + 0.9 * (1 + np.cos(np.pi * t / 7)) / 2
    np.testing.assert_allclose(curve(s, counts), want, rtol=1e-6)


# -- formulas of the papers, re-derived in numpy (float64) --------------------------------------


def test_transformer_schedule_is_the_papers_formula():
    d_model, warmup = 512, 4000
    counts = np.arange(0, 40001, 7)
    step_num = counts + 1.0  # the paper counts updates from 1
    want = d_model**-0.5 * np.minimum(step_num**-0.5, step_num * warmup**-1.5)
    got = curve(gx.transformer_schedule(d_model, warmup_steps=warmup), counts)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    peak = curve(gx.transformer_schedule(d_model, warmup), np.array([warmup - 1]))[0]
    np.testing.assert_allclose(peak, (d_model * warmup) ** -0.5, rtol=1e-6)
    np.testing.assert_allclose(curve(gx.transformer_schedule(64, 10, 2.0), counts),
                               2.0 * 64**-0.5 * np.minimum(step_num**-0.5, step_num * 10**-1.5),
                               rtol=2e-6)


def test_warm_restarts_with_t_mult_1_is_periodic_cosine_annealing():
    # SGDR (Loshchilov & Hutter 2017) with equal periods:
    # lr_min + 0.5 (lr_max - lr_min)(1 + cos(π (t mod T_max) / T_max))
    lr_max, lr_min, T_max = 0.1, 0.001, 100
    t = np.arange(300)
    want = lr_min + 0.5 * (lr_max - lr_min) * (1 + np.cos(np.pi * (t % T_max) / T_max))
    got = curve(gx.cosine_annealing_warm_restarts_schedule(lr_max, T_max, eta_min=lr_min), t)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * lr_max)
    assert got[0] == got[100] == got[200] == np.float32(lr_max)  # a restart every T_max steps


def _warm_restarts_reference(t, T_0, T_mult):
    """Python integers: walk the cycles T_0, T_0 T_mult, ... until the one that holds t."""
    if T_mult == 1:
        return t % T_0, T_0
    start, length = 0, T_0
    while t >= start + length:
        start, length = start + length, length * T_mult
    return t - start, length


@pytest.mark.parametrize("T_0, T_mult", [(1, 2), (7, 3), (5, 1)])
def test_warm_restarts_at_huge_counts(T_0, T_mult):
    counts = np.array([0, 1, 2, 3, 6, 7, 99_999, 10**6, 2**24 + 1, 2**30, 2**31 - 2, 2**31 - 1])
    want = []
    for t in counts.tolist():
        T_cur, T_i = _warm_restarts_reference(t, T_0, T_mult)
        want.append(0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * T_cur / T_i)) / 2)
    got = curve(gx.cosine_annealing_warm_restarts_schedule(0.1, T_0, T_mult, 0.001), counts)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * 0.1)


def test_cyclic_triangular_is_smith_2017_formula():
    # Smith (2017), section 3.1: cycle = ⌊1 + t / 2s⌋, x = |t/s - 2 cycle + 1|,
    # lr = base + (max - base) max(0, 1 - x)
    base, top, s = 0.001, 0.006, 25
    t = np.arange(2000)
    cycle = np.floor(1 + t / (2 * s))
    x = np.abs(t / s - 2 * cycle + 1)
    for mode, amplitude in [("triangular", 1.0), ("triangular2", 1 / 2 ** (cycle - 1))]:
        want = base + (top - base) * np.maximum(0, 1 - x) * amplitude
        got = curve(gx.cyclic_lr_schedule(base, top, s, mode=mode), t)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * top)


@pytest.mark.parametrize("decay_type", ["linear", "cosine", "1-sqrt"])
def test_warmup_stable_decay_formula(decay_type):
    init, peak, end, W, S_, D = 1e-5, 3e-3, 3e-5, 100, 700, 200
    t = np.arange(1500)
    frac = np.clip((t - W - S_) / D, 0, 1)
    shape = {"linear": 1 - frac, "cosine": 0.5 * (1 + np.cos(np.pi * frac)),
             "1-sqrt": 1 - np.sqrt(frac)}[decay_type]
    want = np.where(t < W, init + (peak - init) * t / W,
                    np.where(t < W + S_, peak, end + (peak - end) * shape))
    schedule = gx.warmup_stable_decay_schedule(init, peak, W, S_, D, end, decay_type)
    got = curve(schedule, t)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * peak)
    assert got[W] == got[W + S_ - 1] == np.float32(peak)
    assert (got[W + S_ + D:] == np.float32(end)).all()


def test_warmup_cosine_then_constant_with_join_schedules():
    # warmup linearly, decay with a cosine, then hold a constant (fine-tuning keeps a small lr)
    peak, floor, W, D = 1e-3, 1e-4, 1000, 9000
    schedule = gx.join_schedules(
        [gx.linear_schedule(0.0, peak, W), gx.cosine_decay_schedule(peak, D, alpha=floor / peak),
         gx.constant_schedule(floor)],
        [W, W + D],
    )
    t = np.arange(0, 14000, 3)
    cosine = floor + (peak - floor) * 0.5 * (1 + np.cos(np.pi * np.clip(t - W, 0, D) / D))
    want = np.where(t < W, peak * t / W, np.where(t < W + D, cosine, floor))
    np.testing.assert_allclose(curve(schedule, t), want, rtol=1e-6, atol=1e-6 * peak)
    edges = curve(schedule, np.array([W - 1, W, W + D - 1, W + D]))
    np.testing.assert_allclose(edges, [peak * (W - 1) / W, peak, floor, floor], rtol=1e-6)


def test_step_and_multistep_formulas():
    t = np.arange(500)
    np.testing.assert_allclose(curve(gx.step_lr_schedule(0.1, 30, gamma=0.5), t),
                               0.1 * 0.5 ** (t // 30), rtol=1e-6)
    milestones = [50, 120, 120, 300]
    passed = sum((t >= m).astype(int) for m in milestones)
    np.testing.assert_allclose(curve(gx.multistep_lr_schedule(0.2, milestones, 0.1), t),
                               0.2 * 0.1**passed, rtol=1e-6)
    np.testing.assert_allclose(curve(gx.multistep_lr_schedule(0.2, []), t), np.float32(0.2),
                               rtol=0)


# -- bad input fails at construction, saying what and how to fix ------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: gx.join_schedules([], []), "join_schedules: schedules is empty"),
    (lambda: gx.join_schedules([0.1, 0.2], []), "one boundary fewer than schedules"),
    (lambda: gx.join_schedules([0.1, 0.2, 0.3], [100, 50]), "boundaries must be increasing"),
    (lambda: gx.join_schedules([0.1, 0.2, 0.3], [100, 100]), "boundaries must be increasing"),
    (lambda: gx.join_schedules([0.1, 0.2], [-5]), r"boundaries\[0\] must be a whole number"),
    (lambda: gx.join_schedules(gx.constant_schedule(1.0), []), "must be a sequence"),
    (lambda: gx.warmup_cosine_decay_schedule(0.0, 1.0, 200, 100),
     r"decay_steps \(100\) must exceed warmup_steps \(200\)"),
    (lambda: gx.warmup_cosine_decay_schedule(0.0, 1.0, 100, 100), "must exceed warmup_steps"),
    (lambda: gx.linear_schedule(0.0, 1.0, -10),
     "linear_schedule: transition_steps must be a whole number of steps >= 0, got -10"),
    (lambda: gx.linear_schedule(0.0, 1.0, 10.5), "whole number of steps"),
    (lambda: gx.linear_schedule(0.0, 1.0, float("inf")), "transition_steps must be finite"),
    (lambda: gx.polynomial_schedule(1.0, 0.0, 2, 100, -1), "transition_begin must be a whole"),
    (lambda: gx.cosine_decay_schedule(float("nan"), 10), "init_value must be finite"),
    (lambda: gx.cosine_decay_schedule(1.0, 0), "decay_steps must be a whole number of steps > 0"),
    (lambda: gx.exponential_decay(1.0, -3, 0.5), "transition_steps must be a whole"),
    (lambda: gx.piecewise_constant_schedule(1.0, {100: -0.1}), "scales must be >= 0"),
    (lambda: gx.piecewise_constant_schedule(1.0, {-5: 0.1}), "keys must be whole numbers"),
    (lambda: gx.piecewise_interpolate_schedule("cubic", 1.0), "one of 'linear', 'cosine'"),
    (lambda: gx.multistep_lr_schedule(0.1, [30, 20]), "milestones must be non-decreasing"),
    (lambda: gx.step_lr_schedule(0.1, 0), "step_size must be a whole number of steps > 0"),
    (lambda: gx.cyclic_lr_schedule(0.1, 1.0, mode="sawtooth"), "mode must be one of"),
    (lambda: gx.cyclic_lr_schedule(0.1, 1.0, step_size_up=0), "step_size_up must be > 0"),
    (lambda: gx.cyclic_lr_schedule(0.1, 1.0, scale_mode="iterations"),
     "applies only to a custom scale_fn"),
    (lambda: gx.sgdr_schedule([]), "cosine_kwargs is empty"),
    (lambda: gx.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=50,
                                    decay_steps=20)]), r"cosine_kwargs\[0\]: .*must exceed"),
    (lambda: gx.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=5,
                                    decay_steps=20, alpha=0.1)]), "unknown keys"),
    (lambda: gx.linear_onecycle_schedule(100, 1.0, pct_start=0.9, pct_final=0.5),
     "pct_start .* must not exceed pct_final"),
    (lambda: gx.cosine_onecycle_schedule(0, 1.0), "transition_steps must be a whole number"),
    (lambda: gx.cosine_onecycle_schedule(100, 1.0, pct_start=1.5), r"pct_start must be in \[0"),
    (lambda: gx.cosine_annealing_warm_restarts_schedule(0.1, 0), "T_0 must be a whole number"),
    (lambda: gx.cosine_annealing_warm_restarts_schedule(0.1, 10, T_mult=0), "T_mult must be"),
    (lambda: gx.cosine_annealing_warm_restarts_schedule(0.1, 10, T_mult=1.5), "T_mult must be"),
    (lambda: gx.transformer_schedule(0), "d_model must be > 0"),
    (lambda: gx.warmup_constant_schedule(0.0, 1.0, 0), "warmup_steps must be a whole number"),
    (lambda: gx.warmup_stable_decay_schedule(0.0, 1.0, 10, 10, 0), "decay_steps must be"),
    (lambda: gx.warmup_stable_decay_schedule(0.0, 1.0, 10, 10, 5, decay_type="exp"),
     "decay_type must be one of"),
    (lambda: gx.linear_schedule(0.0, 1.0, 10).values(-1), "num_steps must be an integer >= 0"),
])
def test_bad_input_raises_at_construction(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_traced_arguments_skip_the_checks():
    # a schedule built inside jit or vmap gets tracers; only concrete numbers are checked
    value = jax.jit(lambda peak, w: gx.warmup_cosine_decay_schedule(0.0, peak, w, 100)(w))
    np.testing.assert_allclose(value(2.0, 10), 2.0, rtol=1e-6)


# -- schedules are data ------------------------------------------------------------------------

RECIPES = [
    gx.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 1000),
    gx.exponential_decay(1.0, 100, 0.5, staircase=True, end_value=0.01),
    gx.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.01}),
    gx.sgdr_schedule(_SGDR),
    gx.join_schedules([gx.linear_schedule(0.0, 1.0, 10), 1.0], [10]),
    gx.cyclic_lr_schedule(0.001, 0.006, 20, mode="triangular2"),
    gx.cosine_annealing_warm_restarts_schedule(0.1, 10, T_mult=2),
    gx.multistep_lr_schedule(0.1, [30, 80]),
    gx.warmup_stable_decay_schedule(0.0, 3e-3, 100, 800, 100, decay_type="1-sqrt"),
    gx.linear_onecycle_schedule(1000, 1.0),
    gx.onecycle_lr_schedule(0.1, 97, three_phase=True),
    gx.onecycle_momentum_schedule(120, pct_start=0.25, anneal_strategy="linear"),
    gx.periodic_cosine_annealing_schedule(0.1, 20, eta_min=1e-3),
    gx.multiply_schedules(gx.piecewise_constant_schedule(0.05, {10: 2.0}),
                          gx.exponential_decay(1.0, 1, 0.97)),
    gx.swa_lr_schedule(0.1, 0.01, anneal_epochs=15),
    gx.asgd_schedule(0.1, lambd=1e-2, alpha=0.5),
    gx.relative_step_schedule(1e-2),
]


def test_repr_is_the_recipe():
    s = gx.warmup_cosine_decay_schedule(0, 1e-3, 100, 1000)
    assert repr(s) == ("warmup_cosine_decay_schedule(init_value=0.0, peak_value=0.001, "
                       "warmup_steps=100, decay_steps=1000, end_value=0.0, exponent=1.0)")
    for schedule in RECIPES:
        rebuilt = eval(repr(schedule), vars(S))
        assert rebuilt == schedule and hash(rebuilt) == hash(schedule)
    assert gx.linear_schedule(0.0, 1.0, 10) != gx.linear_schedule(0.0, 2.0, 10)


def test_numbers_are_leaves_so_a_new_schedule_reuses_the_compiled_step():
    evaluate = jax.jit(lambda schedule, count: schedule(count))
    for peak, warmup, total in [(1e-3, 100, 1000), (3e-4, 5, 10), (2, 0, 50)]:
        s = gx.warmup_cosine_decay_schedule(0, peak, warmup, total)
        np.testing.assert_allclose(evaluate(s, 7), s(7), rtol=1e-6)
    for schedule in RECIPES:
        leaves, treedef = jax.tree_util.tree_flatten(schedule)
        bumped = jax.tree_util.tree_unflatten(treedef, [x + 1 for x in leaves])
        evaluate(schedule, 3), evaluate(bumped, 3)
    # one entry per structure: the warmup-cosine schedules above share RECIPES[0]'s
    assert evaluate._cache_size() == len(RECIPES)


def test_vmap_over_a_schedule_argument():
    peaks = jnp.array([1e-3, 2e-3, 4e-3])
    at_50 = jax.vmap(lambda p: gx.warmup_cosine_decay_schedule(0.0, p, 10, 100)(50))(peaks)
    single = curve(gx.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100), np.array([50]))[0]
    np.testing.assert_allclose(at_50, single * np.array([1, 2, 4]), rtol=1e-6)


def test_values_is_the_curve():
    s = gx.cosine_decay_schedule(1.0, 50, alpha=0.1)
    t = np.minimum(np.arange(80), 50)
    np.testing.assert_allclose(s.values(80), 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t / 50)),
                               rtol=1e-6)
    np.testing.assert_array_equal(s.values(5, start=60), np.full(5, np.float32(0.1)))
    assert gx.constant_schedule(0.5).values(4).shape == (4,)


def test_schedules_under_strict_promotion_and_x64():
    schedules = [getattr(gx, name)(*args, **kwargs) for name, args, kwargs in
                 OPTAX_CASES.values()] + RECIPES
    counts = jax.ShapeDtypeStruct((16,), jnp.int32)
    with jax.numpy_dtype_promotion("strict"):
        for s in schedules:
            jax.eval_shape(jax.vmap(s), counts)
    with jax.enable_x64(True):
        for s in RECIPES:
            assert jax.eval_shape(jax.vmap(s), counts).dtype == jnp.float64


def test_plot_draws_each_curve():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = gx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)
    b = optax.linear_schedule(1.0, 0.0, 100)
    ax = S.plot(a, b, num_steps=120, labels=["warmup cosine", "linear"])
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["warmup cosine", "linear"]
    np.testing.assert_array_equal(lines[0].get_ydata(), a.values(120))
    np.testing.assert_allclose(lines[1].get_ydata(), np.maximum(1 - np.arange(120) / 100, 0),
                               atol=1e-6)
    plt.close(ax.figure)


def test_a_float64_run_evaluates_its_schedule_in_float64(mixed_params, noisy_gradients,
                                                         trajectories):
    """Under jax_enable_x64 a schedule is evaluated in float64, as the run is. optax's
    schedules take its int32 step count to float32, ~1e-9 away for this schedule; given the
    count as int64 they evaluate in float64, and then optax.adamw follows the same float64
    trajectory as gradxform's to 1e-12 over 100 steps."""
    args = (0.0, 0.03, 10, 100)
    ours = gx.adamw(gx.warmup_cosine_decay_schedule(*args, end_value=1e-3), weight_decay=1e-2)
    theirs_schedule = optax.warmup_cosine_decay_schedule(*args, end_value=1e-3)
    theirs = optax.adamw(lambda count: theirs_schedule(count.astype(jnp.int64)),
                         weight_decay=1e-2)
    with jax.enable_x64(True):
        params = mixed_params("float64")
        grads = noisy_gradients(params)
        (a, _), (b, _) = trajectories.run([trajectories.stepper(ours, params, grads),
                                           trajectories.stepper(theirs, params, grads)])
        trajectories.assert_close(a, b, dict(rtol=1e-12, atol=1e-13), "adamw, float64 schedule")
        # the learning rate the run reads: float64, the formula's value to float64 rounding
        lr = gx.hyperparams(ours, ours.init(params))["scale_by_learning_rate"]["learning_rate"]
        assert jnp.result_type(lr) == jnp.float64
        at = jax.jit(lambda c: ours.transforms[2].learning_rate(c))(jnp.int32(37))
        t = (37 - 10) / 90
        want = 1e-3 + (0.03 - 1e-3) * 0.5 * (1 + math.cos(math.pi * t))
        assert at.dtype == jnp.float64 and abs(float(at) - want) <= 1e-17
        assert abs(float(theirs_schedule(jnp.int32(37))) - want) > 1e-10  # optax's int32 count
