"""Field kinds: hyperparameter (schedulable leaf), constant (leaf, never a schedule), static."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_conformance import CASES, EXTRA_ARGS

import gradxform as gx
from gradxform._src.protocol.fields import check_argument, integer_at_least
from gradxform.testing import default_params


@gx.pytree_dataclass
class scale_by_const(gx.Transformation):
    """u = c g, with c a constant (the transformation keeps no step count)."""

    c: float = gx.constant(2.0, check=lambda x: None if x > 0 else "> 0")
    k: int = gx.static(1, check=integer_at_least(1))

    def init(self, params):
        return gx.EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(lambda g: self.c * g, updates), state


def test_constant_is_a_leaf_so_a_new_value_reuses_the_compiled_step():
    traced = []

    @jax.jit
    def step(opt, g):
        traced.append(1)
        return opt.update(g, opt.init(g))[0]

    g = {"w": jnp.ones(3)}
    a, b = step(scale_by_const(2.0), g), step(scale_by_const(3.0), g)
    np.testing.assert_array_equal(a["w"], np.full(3, 2.0, np.float32))
    np.testing.assert_array_equal(b["w"], np.full(3, 3.0, np.float32))
    assert len(traced) == 1
    assert jax.tree.leaves(scale_by_const(3.0)) == [3.0]
    assert scale_by_const(3.0).hyperparams(gx.EmptyState()) == {"c": 3.0}


@pytest.mark.parametrize("value", [gx.constant_schedule(2.0), lambda count: 2.0])
def test_constant_refuses_a_schedule_at_construction(value):
    with pytest.raises(TypeError, match=r"scale_by_const: c must be a number or an array, got "
                                        r".*cannot be scheduled"):
        scale_by_const(value)


def test_constant_checks_concrete_values_and_skips_traced_ones():
    with pytest.raises(ValueError, match=r"scale_by_const: c must be > 0, got -1.0"):
        scale_by_const(-1.0)
    with pytest.raises(ValueError, match=r"scale_by_const: c must be finite, got nan"):
        scale_by_const(float("nan"))
    out = jax.vmap(lambda c: scale_by_const(c).update(jnp.ones(2), gx.EmptyState())[0])(
        jnp.asarray([1.0, 2.0]))
    np.testing.assert_array_equal(out, [[1.0, 1.0], [2.0, 2.0]])


@pytest.mark.parametrize("make", [
    lambda s: gx.scale_by_shape(consistent_rms=s),
    lambda s: gx.scale_by_param_block_rms(min_scale=s),
])
def test_numbers_used_without_a_step_count_refuse_schedules(make):
    # These were accepted and then failed inside update with a JAX TypeError.
    with pytest.raises(TypeError, match="cannot be scheduled"):
        make(gx.linear_schedule(0.1, 0.2, 10))
    make(0.2)  # a number is fine


@pytest.mark.parametrize("value, ok", [
    (1, True), (3, True), (np.int32(2), True), (0, False), (-1, False), (True, False),
    (2.0, False), (2.5, False), ("2", False),
])
def test_integer_at_least(value, ok):
    check = integer_at_least(1)
    assert (check(value) is None) == ok
    if not ok:
        assert check(value) == "an integer >= 1"


@pytest.mark.parametrize("make, message", [
    (lambda: scale_by_const(k=0), r"scale_by_const: k must be an integer >= 1, got 0"),
    (lambda: gx.scale_by_muon(ns_steps=2.0), r"scale_by_muon: ns_steps must be an integer >= 1"),
    (lambda: gx.MultiSteps(gx.sgd(0.1), 1.5), r"MultiSteps: every_k_schedule must be an integer"),
    (lambda: gx.lookahead(gx.sgd(0.1), 0, 0.5), r"lookahead: sync_period must be an integer >= 1"),
    (lambda: gx.apply_if_finite(gx.sgd(0.1), -1),
     r"apply_if_finite: max_consecutive_errors must be an integer >= 0, got -1"),
    (lambda: gx.quantize_state(gx.adam(0.1), min_size=-1),
     r"quantize_state: min_size must be an integer >= 0"),
    (lambda: gx.schedule_free_sgd(0.1, warmup_steps=0),
     r"schedule_free_sgd: warmup_steps must be an integer >= 1, got 0"),
    (lambda: gx.hutchinson_diagonal(lambda p: p, {"w": jnp.ones(2)}, jax.random.key(0),
                                    num_samples=0),
     r"hutchinson_diagonal: num_samples must be an integer >= 1, got 0"),
])
def test_one_integer_check_everywhere(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_check_argument_message():
    with pytest.raises(ValueError, match=r"^f: n must be an integer >= 2, got 1$"):
        check_argument("f", "n", 1, integer_at_least(2))
    check_argument("f", "n", 2, integer_at_least(2))


def _inner_transformations(t):
    yield t
    for name in t._child_fields:
        value = getattr(t, name)
        members = value.values() if isinstance(value, dict) else (
            value if isinstance(value, tuple) else (value,))
        for member in members:
            if isinstance(member, gx.Transformation):
                yield from _inner_transformations(member)


def _hyperparameter_fields():
    seen = {}
    for case in sorted(CASES):
        for t in _inner_transformations(CASES[case]()):
            for f in dataclasses.fields(t):
                kind = f.metadata.get("kind")
                if kind in ("hyper", "constant") and (type(t).__name__, f.name) not in seen:
                    seen[type(t).__name__, f.name] = (case, t, f.name, kind)
    return list(seen.values())


def test_every_hyperparameter_can_be_scheduled_and_no_constant_can():
    """Each `hyperparameter` field of every public transformation runs two jitted steps when
    given as a schedule; each `constant` field refuses one at construction."""
    params = default_params()
    grads = jax.tree.map(jnp.ones_like, params)
    failures = []
    for case, t, name, kind in _hyperparameter_fields():
        value = getattr(t, name)
        if value is None or callable(value) or jnp.ndim(value) != 0:
            continue  # off, already scheduled, or not a scalar
        schedule = gx.constant_schedule(value)
        if kind == "constant":
            with pytest.raises(TypeError, match="cannot be scheduled"):
                dataclasses.replace(t, **{name: schedule})
            continue
        top = CASES[case]()
        target = next(x for x in _inner_transformations(top)
                      if type(x) is type(t) and x == t)
        swapped = jax.tree.map(lambda x, target=target, name=name, schedule=schedule:
                               x._replace(**{name: schedule}) if x is target else x,
                               top, is_leaf=lambda x, target=target: x is target)
        extra = EXTRA_ARGS[case](params) if case in EXTRA_ARGS else {}
        try:
            update = jax.jit(lambda g, s, p, opt=swapped, extra=extra: opt.update(g, s, p,
                                                                                 **extra))
            state = swapped.init(params)
            for _ in range(2):
                _, state = update(grads, state, params)
        except Exception as e:  # noqa: BLE001 - the test lists every failure
            failures.append(f"{type(t).__name__}.{name}: {type(e).__name__}: {e}"[:200])
    assert not failures, "\n".join(failures)


def test_constant_and_hyperparameter_are_public_field_kinds():
    assert inspect.signature(gx.constant).parameters.keys() == {"default", "check"}
    assert {"constant", "hyperparameter", "static"} <= set(gx.__all__)


@pytest.mark.parametrize("make, message", [
    (lambda: gx.masked(0.1, {"w": True}), r"masked: inner must be a transformation"),
    (lambda: gx.MultiSteps("adam", 2), r"MultiSteps: opt must be a transformation .*got 'adam'"),
    (lambda: gx.lookahead(None, 2, 0.5), r"lookahead: fast_optimizer must be a transformation"),
    (lambda: gx.partition({"a": gx.sgd(0.1), "b": 1.0}, {"w": "a"}),
     r"partition: transforms\['b'\] must be a transformation .*got 1.0"),
    (lambda: gx.quantize_state(gx.adam, block_size=4),
     r"quantize_state: inner must be a transformation"),
])
def test_child_fields_hold_transformations(make, message):
    with pytest.raises(TypeError, match=message):
        make()
