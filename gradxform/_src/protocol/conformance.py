"""A conformance check that every transformation passes, for the library's own and for users'.

    from gradxform.testing import check_transformation
    check_transformation(my_transformation)

checks that `init`/`update`:
- give the same results eagerly, under `jax.jit` and inside `jax.lax.scan`;
- keep the state's structure, shapes and dtypes from step to step;
- accept None leaves and empty (size-0) leaves;
- keep 16-bit (bf16, f16) updates in their dtype;
- work in float64 with `jax_enable_x64`;
- raise nothing under strict dtype promotion (`jax.numpy_dtype_promotion('strict')`);
- give the same numbers and the same state structure inside `lax.scan` with every numeric
  hyperparameter (of the transformation and of the transformations inside it) given as a
  schedule of that value.
It raises AssertionError naming the property that fails. States may hold typed PRNG keys
(`jax.random.key`); their key data must agree exactly.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from gradxform._src.protocol.dataclass import PytreeDataclass, pytree_dataclass
from gradxform._src.protocol.fields import concrete_values, hyperparameter
from gradxform._src.protocol.schedule import Schedule
from gradxform._src.protocol.transformation import Transformation
from gradxform._src.protocol.updates import apply_updates


def default_params(dtype: DTypeLike = jnp.float32) -> dict:
    """A small tree with a matrix, a vector, a scalar, a None leaf and an empty leaf."""
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "dense": {
            "w": jax.random.normal(k1, (4, 3), dtype),
            "b": jax.random.normal(k2, (3,), dtype),
        },
        "scale": jax.random.normal(k3, (), dtype),
        "frozen": None,
        "empty": jnp.zeros((0,), dtype),
    }


def _gradients(params, step: int):
    """Deterministic pseudo-gradients of varying sign and scale for step `step`."""
    def grad(path, p):
        seed = (zlib.crc32(jax.tree_util.keystr(path).encode()) + 7919 * step) % (2**31)
        g = jax.random.normal(jax.random.key(seed), jnp.shape(p), jnp.float32)
        return (g * (1.0 + step) + 0.1 * p.astype(jnp.float32)).astype(p.dtype)

    return jax.tree_util.tree_map_with_path(grad, params)


def _structure(tree):
    return jax.tree_util.tree_structure(tree), [
        (jnp.shape(x), jnp.result_type(x)) for x in jax.tree_util.tree_leaves(tree)
    ]


def _assert_close(a, b, what: str, rtol: float, atol: float) -> None:
    ta, tb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    if ta != tb:
        raise AssertionError(f"{what}: tree structures differ: {ta} vs {tb}")
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        if jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):  # a state's random key
            x, y = jax.random.key_data(x), jax.random.key_data(y)
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                raise AssertionError(f"{what}: key {jax.tree_util.keystr(path)} differs")
            continue
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape or not np.allclose(x, y, rtol=rtol, atol=atol, equal_nan=True):
            err = np.max(np.abs(x - y)) if x.shape == y.shape and x.size else "shape"
            raise AssertionError(
                f"{what}: leaf {jax.tree_util.keystr(path)} differs (max abs diff {err})"
            )


def _run_eager(t, params, grads_seq, extra_args):
    state = t.init(params)
    outs = []
    for g in grads_seq:
        u, state = t.update(g, state, params, **extra_args)
        params = apply_updates(params, u)
        outs.append(u)
    return outs, state, params


@pytree_dataclass
class held_value(Schedule):
    """The schedule that is `value` at every step, returned as given (an int stays an int):
    what `check_transformation` gives each numeric hyperparameter in its schedule check."""

    value: Any = hyperparameter()

    def __call__(self, count):
        return self.value


def _is_number(value) -> bool:
    values = concrete_values(value)
    return values is not None and len(values) == 1 and np.ndim(value) == 0


def with_schedules(node: Any) -> tuple[Any, list[str]]:
    """`node` with every numeric hyperparameter (kind `hyperparameter`, not `constant`) of
    every transformation inside it given as a `held_value` schedule, and the fields replaced."""
    if isinstance(node, tuple) and not hasattr(node, "_fields"):
        pairs = [with_schedules(x) for x in node]
        return tuple(x for x, _ in pairs), [n for _, names in pairs for n in names]
    if isinstance(node, dict):
        pairs_by_key = {k: with_schedules(v) for k, v in node.items()}
        return ({k: x for k, (x, _) in pairs_by_key.items()},
                [n for _, names in pairs_by_key.values() for n in names])
    if not isinstance(node, Transformation) or not isinstance(node, PytreeDataclass):
        return node, []
    changes: dict[str, Any] = {}
    names: list[str] = []
    owner = type(node).__name__
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if f.metadata.get("kind") == "hyper" and _is_number(value):
            changes[f.name] = held_value(value)
            names.append(f"{owner}.{f.name}")
        elif f.metadata.get("kind") == "child":
            changes[f.name], inner = with_schedules(value)
            names += inner
    return node._replace(**changes), names


def check_transformation(
    transformation: Transformation,
    params: Any = None,
    *,
    steps: int = 3,
    extra_args: dict | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    make_extra_args: Callable | None = None,
    schedules: bool = True,
) -> None:
    """Runs the conformance checks on `transformation`; raises AssertionError on a failure.

    Args:
      transformation: the transformation to check.
      params: the params to check with (default: `default_params()`, which holds None and
        empty leaves).
      steps: number of update steps.
      extra_args: keyword arguments passed to every `update` call.
      rtol, atol: tolerance between eager, jitted and scanned runs in float32. They agree to
        rounding, not bit for bit: the jitted step receives the transformation as an argument,
        so a hyperparameter such as β2 = 0.999 is a float32 value there and 1 - β2 is formed in
        float32 (relative error up to ulp(β2)/(1 - β2) ≈ 1.3e-5), while eagerly Python forms
        1 - β2 in double precision. XLA also fuses and reorders float operations.
      make_extra_args: `fn(params) -> dict` building `extra_args` for other params (used for
        the bf16 and float64 checks); default reuses `extra_args`.
      schedules: run the lax.scan check with every numeric hyperparameter given as a schedule
        of its value, which must give the eager run's numbers and state structure: a
        transformation that reads `self.b1` where it should read `self.at(state.count).b1`
        fails there.
    """
    extra_args = dict(extra_args or {})
    make_extra = make_extra_args or (lambda p: extra_args)
    if params is None:
        params = default_params()
    t = transformation
    grads_seq = [_gradients(params, i) for i in range(steps)]

    # 1. eager == jit == scan, and a stable state structure.
    eager_updates, eager_state, _ = _run_eager(t, params, grads_seq, extra_args)
    state = t.init(params)
    structure0 = _structure(state)
    jit_update = jax.jit(lambda t, g, s, p: t.update(g, s, p, **extra_args))
    p = params
    for i, g in enumerate(grads_seq):
        u, state = jit_update(t, g, state, p)
        if _structure(state) != structure0:
            raise AssertionError(
                f"state structure, shape or dtype changed at step {i}: {structure0} -> "
                f"{_structure(state)}"
            )
        _assert_close(u, eager_updates[i], f"jit vs eager, step {i}", rtol, atol)
        p = apply_updates(p, u)
    _assert_close(state, eager_state, "jit vs eager, final state", rtol, atol)

    # ... and inside lax.scan with every numeric hyperparameter given as a schedule of its value,
    # which must change nothing: a transformation that reads `self.b1` where it should read
    # `self.at(state.count).b1` fails here. (One compilation serves both checks.)
    scheduled, names = with_schedules(t) if schedules else (t, [])
    what = f" with schedules for {', '.join(names)}" if names else ""
    scan_init = scheduled.init(params)
    if _structure(scan_init) != structure0:
        raise AssertionError(f"the state's structure differs{what}: {structure0} -> "
                             f"{_structure(scan_init)}")

    def body(carry, g):
        p, s = carry
        u, s = scheduled.update(g, s, p, **extra_args)
        return (apply_updates(p, u), s), u

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads_seq)
    try:
        (_, scan_state), scan_updates = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(
            (params, scan_init), stacked
        )
    except Exception as e:
        if not names:
            raise
        raise AssertionError(
            f"update failed{what} ({type(e).__name__}: {e}); resolve the hyperparameters at "
            f"the step count, hp = self.at(state.count), and read hp.<name>") from e
    for i in range(steps):
        _assert_close(
            jax.tree.map(lambda x, i=i: x[i], scan_updates), eager_updates[i],
            f"lax.scan{what} vs eager, step {i}", rtol, atol,
        )
    _assert_close(scan_state, eager_state, f"lax.scan{what} vs eager, final state", rtol, atol)

    # 2. 16-bit params keep their dtype, and so do the state's leaves from step to step.
    for dtype in (jnp.bfloat16, jnp.float16):
        p16 = jax.tree.map(lambda x, dtype=dtype: x.astype(dtype), params)
        s16 = t.init(p16)
        st = _structure(s16)
        extra16 = make_extra(p16)
        for i in range(2):
            g16 = _gradients(p16, i)
            u16, s16 = t.update(g16, s16, p16, **extra16)
            for (path, u) in jax.tree_util.tree_leaves_with_path(u16):
                if u.dtype != dtype:
                    raise AssertionError(
                        f"{jnp.dtype(dtype).name} updates came back as {u.dtype} at "
                        f"{jax.tree_util.keystr(path)}"
                    )
            if _structure(s16) != st:
                raise AssertionError(f"state dtypes changed with {jnp.dtype(dtype).name} params")
            p16 = apply_updates(p16, u16)
            for x in jax.tree_util.tree_leaves(p16):
                if x.dtype != dtype:
                    raise AssertionError(f"apply_updates changed a {dtype} param to {x.dtype}")
            if not all(bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
                       for x in jax.tree_util.tree_leaves(p16)):
                raise AssertionError(f"non-finite params after a step in {jnp.dtype(dtype).name}")

    # 3. float64 under x64 (traced, not compiled: the dtypes are known once it is traced).
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), params)
        s64 = t.init(p64)
        extra64 = make_extra(p64)
        u64, s64 = jax.eval_shape(lambda t, g, s, p: t.update(g, s, p, **extra64),
                                  t, _gradients(p64, 0), s64, p64)
        for path, u in jax.tree_util.tree_leaves_with_path(u64):
            if u.dtype != jnp.float64:
                raise AssertionError(
                    f"float64 updates came back as {u.dtype} at {jax.tree_util.keystr(path)}"
                )

    # 4. strict dtype promotion, eagerly (Python numbers) and traced (hyperparameters as
    # arrays, as in a jitted step; a promotion error is raised while tracing).
    with jax.numpy_dtype_promotion("strict"):
        s = t.init(params)
        u, s = t.update(grads_seq[0], s, params, **extra_args)
        jax.jit(lambda t, g, s, p: t.update(g, s, p, **extra_args)).trace(
            t, grads_seq[0], s, params)
        p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
        t.update(_gradients(p16, 0), t.init(p16), p16, **make_extra(p16))
