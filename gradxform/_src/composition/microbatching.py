"""Microbatching: a function of a batch computed over slices of it, one slice at a time.

`microbatch(fun, argnums, microbatch_size)` evaluates `fun` on microbatches of the batch
arguments in a `lax.fori_loop` and accumulates the outputs (sum, mean, running mean or
concatenation), so the peak memory is that of one microbatch; `micro_vmap` vmaps inside each
microbatch; `micro_grad` gives per-example gradients accumulated over microbatches (DP-SGD's
clip-then-sum with `transform_fn`). The functions, arguments and numbers are those of
`optax.microbatching`, whose microbatch i holds the examples i, i + n, i + 2n, ... of the batch
(n microbatches; a column-major reshape), so that every microbatch samples the whole batch.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Aux(NamedTuple):
    """What `micro_grad`'s function returns besides the gradient: the per-example losses, the
    `metrics_fn` of the per-example gradients and the function's own aux."""

    values: Any
    metrics: Any
    aux: Any


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How the outputs of the microbatches are combined: `init(value)`, `update(carry, value,
    index)`, `finalize(carry)`, and `aggregate(values)` over a leading axis (for `micro_vmap`)."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The built-in accumulators: the mean, the sum, a running mean, or the concatenation of the
    microbatches' outputs (in the order of the batch)."""

    MEAN = enum.auto()
    SUM = enum.auto()
    RUNNING_MEAN = enum.auto()
    CONCAT = enum.auto()


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Splits axis `axis` of every leaf into (num_microbatches, microbatch_size), column-major:
    microbatch i holds the examples i, i + n, i + 2n, ... (as optax.microbatching does)."""
    def reshape(x):
        return x.reshape(x.shape[:axis] + (-1, microbatch_size) + x.shape[axis + 1:], order="F")

    return jax.tree.map(reshape, tree)


def _floating(fn: Callable) -> Callable:
    def checked(x):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError("microbatch: MEAN and RUNNING_MEAN accumulate floating point "
                             f"values only, got {jnp.result_type(x)}")
        return fn(x)

    return checked


def _leafwise(acc: Accumulator) -> Accumulator:
    return Accumulator(
        lambda v: jax.tree.map(acc.init, v),
        lambda c, v, i: jax.tree.map(lambda a, b: acc.update(a, b, i), c, v),
        lambda c: jax.tree.map(acc.finalize, c),
        lambda v: jax.tree.map(acc.aggregate, v),
    )


def _builtin(kind: AccumulationType, num_microbatches: int) -> Accumulator:
    if kind is AccumulationType.SUM:
        return Accumulator(jnp.zeros_like, lambda c, v, _: c + v, lambda c: c,
                           functools.partial(jnp.sum, axis=0))
    if num_microbatches <= 0:
        raise ValueError(f"microbatch: num_microbatches must be positive, got {num_microbatches}")
    if kind is AccumulationType.MEAN:
        return Accumulator(_floating(jnp.zeros_like), lambda c, v, _: c + v,
                           lambda c: c / num_microbatches, functools.partial(jnp.mean, axis=0))
    if kind is AccumulationType.RUNNING_MEAN:
        def running(c, v, i):
            p = i / (i + 1)                              # m_i = m_{i-1} i/(i+1) + v_i/(i+1)
            return c * p + v * (1 - p)

        return Accumulator(_floating(jnp.zeros_like), running, lambda c: c,
                           functools.partial(jnp.mean, axis=0))
    return Accumulator(
        lambda v: jnp.broadcast_to(jnp.zeros_like(v), (num_microbatches,) + v.shape),
        lambda c, v, i: c.at[i].set(v),
        lambda c: c.reshape(-1, *c.shape[2:], order="F"),
        lambda v: v,
    )


def _canonical(tree: Any, num_microbatches: int) -> Accumulator:
    """One accumulator for a tree of accumulators (or `AccumulationType`s) matching the output."""
    def one(acc):
        if isinstance(acc, Accumulator):
            return acc
        if isinstance(acc, AccumulationType):
            return _leafwise(_builtin(acc, num_microbatches))
        raise ValueError(f"microbatch: unknown accumulator {acc!r}")

    accs = jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, Accumulator))
    is_acc = lambda x: isinstance(x, Accumulator)  # noqa: E731

    def over(fn_name):
        def apply(*trees):
            return jax.tree.map(lambda a, *xs: getattr(a, fn_name)(*xs), accs, *trees,
                                is_leaf=is_acc)
        return apply

    return Accumulator(
        init=over("init"),
        update=lambda c, v, i: jax.tree.map(lambda a, x, y: a.update(x, y, i), accs, c, v,
                                            is_leaf=is_acc),
        finalize=over("finalize"),
        aggregate=over("aggregate"),
    )


def microbatch(fun: Callable[..., Any], argnums: int | Sequence[int], microbatch_size: int | None,
               accumulator: Any = AccumulationType.SUM, *, argnames: str | Sequence[str] = (),
               in_axes: int | Sequence[int] = 0,
               num_real_microbatches: int | jax.Array | None = None) -> Callable[..., Any]:
    """`fun` evaluated over microbatches of its batch arguments, the outputs accumulated.

    Args:
      fun: the function of a batch.
      argnums, argnames: the positions and names of the batch arguments.
      microbatch_size: examples per microbatch (it must divide the batch); None returns `fun`.
      accumulator: an `AccumulationType`, an `Accumulator`, or a tree of them like the output.
      in_axes: the batch axis of each batch argument (one int for all).
      num_real_microbatches: stop after this many microbatches (padding at the end).

    Returns:
      A function with `fun`'s arguments.

    References:
      optax.microbatching.microbatch.
    """
    if microbatch_size is None:
        return fun
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    argnames = (argnames,) if isinstance(argnames, str) else tuple(argnames)
    axes = ((in_axes,) * (len(argnums) + len(argnames)) if isinstance(in_axes, int)
            else tuple(in_axes))
    size = microbatch_size

    def microbatched(*args: Any, **kwargs: Any) -> Any:
        trees = [args[i] for i in argnums] + [kwargs[k] for k in argnames]
        sizes = {x.shape[ax] for tree, ax in zip(trees, axes, strict=True)
                 for x in jax.tree.leaves(tree)}
        if len(sizes) > 1:
            raise ValueError(f"microbatch: batch arguments must have equal-size batch axes, "
                             f"found {sorted(sizes)}")
        (batch_size,) = sizes
        if batch_size % size:
            raise ValueError(f"microbatch: batch_size={batch_size} must be divisible by "
                             f"microbatch_size={size}")
        trees = [reshape_batch_axis(t, size, ax) for t, ax in zip(trees, axes, strict=True)]
        num = batch_size // size
        acc = _canonical(accumulator, num)

        def one(index):
            picked = [jax.tree.map(functools.partial(jnp.take, indices=index, axis=ax), t)
                      for t, ax in zip(trees, axes, strict=True)]
            pos, kw = list(args), dict(kwargs)
            for i, t in zip(argnums, picked[:len(argnums)], strict=True):
                pos[i] = t
            for name, t in zip(argnames, picked[len(argnums):], strict=True):
                kw[name] = t
            return fun(*pos, **kw)

        carry = acc.init(jax.eval_shape(one, 0))
        bound = num if num_real_microbatches is None else num_real_microbatches
        carry = jax.lax.fori_loop(0, bound, lambda i, c: acc.update(c, one(i), i), carry)
        return acc.finalize(carry)

    return microbatched


def micro_vmap(fun: Callable[..., Any], in_axes: int | Sequence[int | None] = 0,
               out_axes: Any = 0, *, microbatch_size: int | None = None,
               vmap_fn: Callable[..., Any] = jax.vmap,
               accumulator: Any = AccumulationType.CONCAT,
               num_real_microbatches: int | jax.Array | None = None) -> Callable[..., Any]:
    """`vmap_fn(fun, in_axes)` run one microbatch at a time, the outputs accumulated (by
    default concatenated: the same result as the vmap, in less memory).

    References:
      optax.microbatching.micro_vmap.
    """
    if out_axes != 0:
        raise NotImplementedError("micro_vmap: only out_axes=0 is supported (as in optax)")
    axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    def vmapped(*args: Any, kwargs: dict) -> Any:
        out = vmap_fn(fun, axes, out_axes)(*args, **kwargs)
        return _canonical(accumulator, jax.tree.leaves(out)[0].shape[0]).aggregate(out)

    inner = microbatch(vmapped, argnums=tuple(i for i, ax in enumerate(axes) if ax is not None),
                       argnames="kwargs", microbatch_size=microbatch_size,
                       accumulator=accumulator,
                       in_axes=tuple(ax for ax in axes if ax is not None) + (0,),
                       num_real_microbatches=num_real_microbatches)
    return lambda *args, **kwargs: inner(*args, kwargs=kwargs)


def micro_grad(fun: Callable[..., Any], has_aux: bool = False,
               argnums: int | Sequence[int] = 0, *, batch_argnums: int | Sequence[int] = 1,
               keep_batch_dim: bool = True, microbatch_size: int | None = None,
               accumulator: Any = AccumulationType.SUM,
               transform_fn: Callable[[Any], Any] = lambda g: g,
               metrics_fn: Callable[[Any], Any] = lambda g: None,
               num_real_microbatches: int | jax.Array | None = None) -> Callable[..., Any]:
    """Per-example gradients of `fun`, each passed through `transform_fn` (per-example
    clipping), accumulated over the batch (summed by default), one microbatch at a time.

    Returns:
      A function with `fun`'s arguments returning (accumulated gradient, `Aux(values,
      metrics, aux)`), the latter per example.

    References:
      optax.microbatching.micro_grad.
    """
    batch = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    with_aux = fun if has_aux else (lambda *a, **k: (fun(*a, **k), None))
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def per_example(*args, **kwargs):
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), Aux(values=value, metrics=metrics_fn(grad), aux=aux)

    in_axes: list[int | None] = [None] * (max(batch) + 1)
    for i in batch:
        in_axes[i] = 0
    micro = micro_vmap(per_example, in_axes=in_axes,
                       accumulator=(accumulator, AccumulationType.CONCAT),
                       microbatch_size=microbatch_size,
                       num_real_microbatches=num_real_microbatches)
    if not keep_batch_dim:
        return micro

    def with_example_axis(*args: Any, **kwargs: Any) -> Any:
        args_ = list(args)
        for i in batch:
            args_[i] = jax.tree.map(lambda x: jnp.expand_dims(x, axis=1), args[i])
        return micro(*args_, **kwargs)

    return with_example_axis
