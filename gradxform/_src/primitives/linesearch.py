"""Line searches: a step size η along the update u that decreases f enough (Armijo) and, for the
zoom search, flattens its slope enough (strong Wolfe). This module holds the backtracking search
and what both searches share; `zoom.py` holds the zoom search.

A line search needs the objective, so its `update` takes, besides `(updates, state, params)`,
the keyword arguments optax's searches take:

    updates, state = opt.update(grads, state, params, value=f(params), grad=grads, value_fn=f,
                                **data)       # data: further keyword arguments of f

Every keyword argument other than `value`, `grad` and `value_fn` must be an argument of
`value_fn`; it is passed to it. The value and gradient the search computed at its last point are
kept in its state, so a full-batch loop need not evaluate f again at the new params:
`value_and_grad_from_state(f)(params, state=state)` reads them (or computes them when the state
holds none yet).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import (
    constant,
    in_interval,
    integer_at_least,
    non_negative,
    or_infinity,
    positive,
    static,
)
from gradxform._src.protocol.transformation import (
    Params,
    Transformation,
    Updates,
    require_params,
)

ValueFn = Callable[..., Any]


def at_least_one(x):
    return None if x >= 1 else ">= 1"


# -- what every line search shares ----------------------------------------------------------------


def objective_arguments(owner: str, updates: Updates, params: Params | None, value, grad,
                        value_fn: ValueFn | None, extra_args: dict) -> dict:
    """The keyword arguments of `value_fn` among `extra_args`, after checking that the search was
    given what it needs; a keyword that `value_fn` does not take is refused, as in optax."""
    require_params(params, owner, "the point the search starts from")
    missing = [name for name, v in (("value", value), ("grad", grad), ("value_fn", value_fn))
               if v is None]
    if missing:
        raise ValueError(
            f"{owner}.update: {', '.join(missing)} missing; a line search evaluates the "
            f"objective: update(updates, state, params, value=f(params), grad=∇f(params), "
            f"value_fn=f)"
        )
    if not callable(value_fn):
        raise TypeError(f"{owner}.update: value_fn must be callable, got {value_fn!r}")
    try:
        parameters = inspect.signature(value_fn).parameters
    except (TypeError, ValueError):  # no signature to read: pass everything
        return dict(extra_args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra_args)
    unknown = sorted(k for k in extra_args if k not in parameters)
    if unknown:
        raise TypeError(
            f"{owner}.update: keyword arguments {unknown} are not arguments of value_fn; every "
            f"keyword besides value, grad and value_fn is passed to value_fn"
        )
    return dict(extra_args)


def compilable(value_fn: ValueFn, fn_kwargs: dict) -> bool:
    """Whether a search's loop can go through a `jax.jit` keyed on `value_fn`: the function is
    hashable and its keyword arguments are arrays or numbers. Then a Python loop of eager
    updates compiles the loop once, not at every call (each call would trace a new loop)."""
    try:
        hash(value_fn)
    except TypeError:
        return False
    return all(isinstance(x, jax.Array | np.ndarray | np.generic | int | float | complex)
               for x in jax.tree_util.tree_leaves(fn_kwargs))


def scalar_dtype(params: Params) -> jnp.dtype:
    """The dtype of a search's step sizes, values and slopes: the params' real precision
    (float32 for 16-bit params)."""
    return tree_utils.accumulation_dtype(params)


def conj(tree):
    return jax.tree.map(jnp.conj, tree)


def cond_print(condition, message: str, **values) -> None:
    """Prints `message` (formatted with `values`) from inside a compiled function, if
    `condition` holds."""
    jax.lax.cond(condition, lambda: jax.debug.print(message, **values, ordered=True),
                 lambda: None)


# -- backtracking (Armijo) -----------------------------------------------------------------------


class BacktrackingLinesearchInfo(NamedTuple):
    """`num_linesearch_steps`: evaluations of the objective in the last search;
    `decrease_error`: how far its step size misses the sufficient decrease (0: it satisfies it,
    inf: every trial value was NaN or infinite)."""

    num_linesearch_steps: Any
    decrease_error: Any


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """`learning_rate`: the last step size found; `value`: f at the last trial point (the new
    params); `grad`: ∇f there with `store_grad=True`, else None; `info`: diagnostics."""

    learning_rate: Any
    value: Any
    grad: Any
    info: BacktrackingLinesearchInfo


class _BacktrackingCarry(NamedTuple):
    learning_rate: Any
    new_value: Any
    new_grad: Any
    decrease_error: Any
    iter_num: Any


@pytree_dataclass(positional=9)
class scale_by_backtracking_linesearch(Transformation):
    """Backtracking line search: the first step size η = η₀ τ^k (k = 0, 1, ...) that decreases
    f enough, the Armijo criterion

        f(w + η u) ≤ (1 + δ) f(w) + c η ⟨u, ∇f(w)⟩ + ε,

    and the updates η u. The first trial is η₀ = min(γ η_prev, η_max): the last step size grown
    by γ (γ = inf starts every search at η_max). When every trial gives a non-finite value, η = 0
    (no step). u must be a descent direction (⟨u, ∇f(w)⟩ < 0) for a step to exist; a chain such
    as `chain(sgd(1.0), scale_by_backtracking_linesearch(15))` gives one.

    Args:
      max_backtracking_steps: the most decreases of η (the objective is evaluated at most
        max_backtracking_steps + 1 times).
      slope_rtol: c ∈ [0, 1), the fraction of the first-order decrease required.
      decrease_factor: τ ∈ (0, 1).
      increase_factor: γ ≥ 1 (may be inf).
      max_learning_rate: η_max > 0.
      atol: ε ≥ 0, the absolute tolerance of the criterion.
      rtol: δ ≥ 0, its relative tolerance.
      store_grad: also compute ∇f at the accepted point and keep it in the state (for
        `value_and_grad_from_state`), from the linearization made while evaluating f there.
      verbose: print a diagnostic when a search fails.

    Returns:
      A transformation whose `update` takes `value`, `grad` and `value_fn` keyword arguments (see
      the module's docstring); its state is `ScaleByBacktrackingLinesearchState`.

    References:
      Nocedal & Wright, "Numerical Optimization", 2nd ed., Algorithm 3.1, Springer 2006.
      Vaswani et al., "Painless Stochastic Gradient", NeurIPS 2019.
    """

    max_backtracking_steps: Any = constant(check=integer_at_least(0))
    slope_rtol: Any = constant(1e-4, check=in_interval(0, 1, "[)"))
    decrease_factor: Any = constant(0.8, check=in_interval(0, 1, "()"))
    increase_factor: Any = constant(1.5, check=or_infinity(at_least_one))
    max_learning_rate: Any = constant(1.0, check=positive)
    atol: Any = constant(0.0, check=non_negative)
    rtol: Any = constant(0.0, check=non_negative)
    store_grad: bool = static(False)
    verbose: bool = static(False)

    def init(self, params):
        dtype = scalar_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.ones([], dtype),
            value=jnp.full([], jnp.inf, dtype),
            grad=jax.tree.map(jnp.zeros_like, params) if self.store_grad else None,
            info=BacktrackingLinesearchInfo(num_linesearch_steps=jnp.zeros([], jnp.int32),
                                            decrease_error=jnp.full([], jnp.inf, dtype)),
        )

    def update(self, updates, state, params=None, *, value=None, grad=None, value_fn=None,
               **extra_args):
        owner = type(self).__name__
        fn_kwargs = objective_arguments(owner, updates, params, value, grad, value_fn, extra_args)
        search = _backtrack_compiled if compilable(value_fn, fn_kwargs) else _backtrack
        return search(self, updates, state, params, value, grad, fn_kwargs, value_fn=value_fn)


def _backtrack(ls: scale_by_backtracking_linesearch, updates, state, params, value, grad,
               fn_kwargs: dict, *, value_fn):
    """The update of `scale_by_backtracking_linesearch`, once its arguments are checked."""
    dtype = state.learning_rate.dtype
    value = jnp.asarray(value).astype(dtype)
    max_steps = ls.max_backtracking_steps
    # The slope of η ↦ f(w + η u) at 0, negative for a descent direction.
    slope = tree_utils.tree_vdot(updates, conj(grad), dtype)

    def decrease_error(stepsize, new_value):
        error = new_value - (1.0 + ls.rtol) * value - stepsize * ls.slope_rtol * slope
        error = jnp.where(jnp.isnan(error), jnp.inf, error)
        return jnp.maximum(error, 0.0)

    def objective(p):
        return value_fn(p, **fn_kwargs)

    def keep_going(c):
        return (~(c.decrease_error <= ls.atol)) & (c.iter_num <= max_steps)

    def trial(c):
        # The first trial keeps η₀; every later one decreases η by τ.
        lr = jnp.where(c.iter_num > 0, ls.decrease_factor * c.learning_rate,
                       c.learning_rate).astype(dtype)
        new_params = tree_utils.tree_add_scale(params, lr, updates)
        new_grad = c.new_grad
        if ls.store_grad:
            # Evaluate f with its linearization, and transpose that to get ∇f only at the
            # point the search stops at.
            raw_value, f_jvp = jax.linearize(objective, new_params)
            new_value = jnp.asarray(raw_value).astype(dtype)
            error = decrease_error(lr, new_value)
            new_grad = jax.lax.cond(
                (error <= ls.atol) | (c.iter_num == max_steps),
                lambda: tree_utils.cast_like(
                    jax.linear_transpose(f_jvp, new_params)(
                        jnp.ones([], jnp.result_type(raw_value)))[0], c.new_grad),
                lambda: c.new_grad,
            )
        else:
            new_value = jnp.asarray(objective(new_params)).astype(dtype)
            error = decrease_error(lr, new_value)
        return _BacktrackingCarry(lr, new_value, new_grad, error.astype(dtype),
                                  c.iter_num + 1)

    first = jnp.minimum(ls.increase_factor * state.learning_rate,
                        ls.max_learning_rate).astype(dtype)
    carry = _BacktrackingCarry(
        learning_rate=first, new_value=value,
        new_grad=jax.tree.map(jnp.zeros_like, params),
        decrease_error=jnp.full([], jnp.inf, dtype), iter_num=jnp.zeros([], jnp.int32),
    )
    carry = jax.lax.while_loop(keep_going, trial, carry)
    # Every trial non-finite: no step, rather than a step to NaN.
    learning_rate = jnp.where(jnp.isinf(carry.decrease_error), 0.0, carry.learning_rate)
    if ls.verbose:
        cond_print(carry.decrease_error > ls.atol,
                   "scale_by_backtracking_linesearch: no step size with sufficient "
                   "decrease; value {value}, slope {slope}, step size {stepsize}, "
                   "decrease error {error}", value=value, slope=slope,
                   stepsize=carry.learning_rate, error=carry.decrease_error)
    new_state = ScaleByBacktrackingLinesearchState(
        learning_rate=learning_rate.astype(dtype),
        value=carry.new_value,
        grad=carry.new_grad if ls.store_grad else None,
        info=BacktrackingLinesearchInfo(num_linesearch_steps=carry.iter_num,
                                        decrease_error=carry.decrease_error),
    )
    return tree_utils.tree_scale(learning_rate, updates), new_state


# Eager calls (a Python loop of updates) then compile the search once per objective.
_backtrack_compiled = jax.jit(_backtrack, static_argnames=("value_fn",))


# -- reusing the search's last evaluation ---------------------------------------------------------


def _find_fields(tree, name: str) -> list:
    """Every field or key called `name` in the named tuples and dicts of `tree` (not inside
    one already found)."""
    found: list = []

    def walk(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            for field in node._fields:
                child = getattr(node, field)
                if field == name:
                    found.append(child)
                else:
                    walk(child)
        elif isinstance(node, dict):
            for key, child in node.items():
                if key == name:
                    found.append(child)
                else:
                    walk(child)
        elif isinstance(node, tuple | list):
            for child in node:
                walk(child)

    walk(tree)
    return found


def value_and_grad_from_state(value_fn: ValueFn) -> Callable[..., tuple[Any, Any]]:
    """`jax.value_and_grad(value_fn)` that reads the value and gradient a line search kept in
    the optimizer's state, when it kept finite ones.

    `value_and_grad_from_state(f)(params, *args, state=state, **kwargs)` returns the `value` and
    `grad` held in `state` (by `scale_by_zoom_linesearch`, or
    `scale_by_backtracking_linesearch(store_grad=True)`): f and ∇f at the params the last search
    stepped to, so a full-batch loop evaluates f once per iteration less. Before the first step
    the state holds value = inf, and `jax.value_and_grad(f)(params, *args, **kwargs)` is
    computed instead (under `lax.cond`, so only one branch runs).

    Args:
      value_fn: the objective, returning a scalar, differentiable by `jax.value_and_grad`.

    Returns:
      A function `(params, *args, state, **kwargs) -> (value, grad)`.
    """

    def value_and_grad(params, *fn_args, state, **fn_kwargs):
        values, grads = _find_fields(state, "value"), _find_fields(state, "grad")
        if len(values) != 1 or len(grads) != 1 or grads[0] is None:
            raise ValueError(
                f"value_and_grad_from_state: the state must hold exactly one 'value' and one "
                f"'grad' (found {len(values)} and {sum(g is not None for g in grads)}); use a "
                f"line search that keeps them, e.g. scale_by_zoom_linesearch or "
                f"scale_by_backtracking_linesearch(..., store_grad=True)"
            )
        value, grad = values[0], grads[0]
        return jax.lax.cond(
            jnp.isfinite(value),
            lambda p, a, kw: (value, grad),
            lambda p, a, kw: jax.value_and_grad(value_fn)(p, *a, **kw),
            params, fn_args, fn_kwargs,
        )

    return value_and_grad
