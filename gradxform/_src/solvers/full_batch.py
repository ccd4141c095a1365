"""Full-batch minimisation in one call: the whole solve is one compiled `lax.while_loop`.

    result = gx.minimize(f, params)                     # L-BFGS with a zoom line search
    result.params, result.value, result.status          # MinimizeStatus.CONVERGED, ...

Each iteration is one `update` of the solver, given the line search's keyword arguments
(`value`, `grad`, `value_fn`), and `apply_updates`. When the solver ends with a line search that
keeps f and ∇f at the point it stepped to (`scale_by_zoom_linesearch`, or
`scale_by_backtracking_linesearch(store_grad=True)`), the loop reads them from its state instead
of evaluating f again, so f and ∇f are traced twice in all: once before the loop, once in the
search. Any other transformation (`gx.sgd(1e-2)`, `gx.adam(1e-3)`) takes plain steps from the
gradient, evaluated once per iteration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.composition.combine import chain, named_chain
from gradxform._src.presets.alias import lbfgs
from gradxform._src.primitives.clipping import global_norm
from gradxform._src.primitives.linesearch import scale_by_backtracking_linesearch
from gradxform._src.primitives.zoom import scale_by_zoom_linesearch
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.fields import check_argument, integer_at_least, non_negative
from gradxform._src.protocol.transformation import (
    OptState,
    Params,
    Transformation,
    require_transformation,
)
from gradxform._src.protocol.updates import apply_updates


class MinimizeStatus:
    """Why a solve stopped: `MinimizeResult.status` holds one of these codes as an int32 (a
    plain int, so that it compares inside jit and under vmap: `result.status == CONVERGED`)."""

    CONVERGED = 0    # ‖∇f‖₂ ≤ tol
    MAX_STEPS = 1    # max_steps iterations without converging
    NON_FINITE = 2   # the next iterate's value or gradient norm was NaN or inf; not taken
    STALLED = 3      # a step changed no parameter (e.g. the line search found no decrease)


_RUNNING = -1

_MESSAGES = {
    MinimizeStatus.CONVERGED: "converged: the gradient norm is at most tol",
    MinimizeStatus.MAX_STEPS: "stopped after max_steps iterations without converging",
    MinimizeStatus.NON_FINITE: ("stopped: the next iterate's value or gradient was NaN or "
                                "infinite; the result is the last finite iterate"),
    MinimizeStatus.STALLED: ("stopped: a step changed no parameter (the line search found no "
                             "decrease); the gradient norm is above tol"),
}


class MinimizeResult(NamedTuple):
    """The outcome of `minimize`; under `jax.vmap` every field has the batch axis.

    Attributes:
      params: the last iterate (the last finite one if the solve stopped on a non-finite value).
      value: f(params).
      grad: ∇f(params).
      grad_norm: ‖∇f(params)‖₂, the quantity compared with tol.
      num_steps: iterations taken (solver updates applied).
      num_fun_evals: evaluations of f (with its gradient, except the trials of a backtracking
        search without `store_grad`), including the first one and, with `has_aux`, the final
        one that computes aux.
      status: a `MinimizeStatus` as an int32 array.
      aux: fun's auxiliary output at params (with `has_aux=True`), else None.
      state: the solver's state after the last update (to continue the solve; after a
        NON_FINITE stop, the state of the update whose iterate was refused).
    """

    params: Params
    value: jax.Array
    grad: Params
    grad_norm: jax.Array
    num_steps: jax.Array
    num_fun_evals: jax.Array
    status: jax.Array
    aux: Any
    state: OptState

    @property
    def converged(self) -> jax.Array:
        """Whether ‖∇f‖₂ ≤ tol was reached."""
        return self.status == MinimizeStatus.CONVERGED

    def message(self) -> str:
        """Why the solve stopped, in words (for an unbatched result)."""
        return _MESSAGES[int(self.status)]


def _final_line_search(solver: Transformation, state) -> tuple[Any, Any]:
    """(search, its state) when `solver` ends with a line search, else (None, None); decided
    while tracing, from the structure. The search's state holds f at the point it stepped to,
    and ∇f there unless it is a backtracking search without `store_grad`."""
    while isinstance(solver, chain | named_chain) and solver.transforms:
        state = state[solver.names[-1]] if isinstance(solver, named_chain) else state[-1]
        solver = solver.transforms[-1]
    if isinstance(solver, scale_by_zoom_linesearch | scale_by_backtracking_linesearch):
        return solver, state
    return None, None


def _any_nonzero(tree) -> jax.Array:
    moved = jnp.zeros([], bool)
    for x in jax.tree_util.tree_leaves(tree):
        moved = moved | jnp.any(x != 0)
    return moved


class _Carry(NamedTuple):
    params: Any
    state: Any
    value: Any
    grad: Any
    num_steps: Any
    num_fun_evals: Any
    status: Any


def _check_objective(fun: Callable, params, args: tuple, has_aux: bool) -> None:
    """Refuses, before tracing the solve, an objective that does not return a real scalar."""
    out = jax.eval_shape(fun, params, *args)
    if has_aux:
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise ValueError(
                f"minimize: with has_aux=True, fun must return a pair (value, aux), got "
                f"{jax.tree.map(lambda s: f'{s.dtype}{list(s.shape)}', out)}"
            )
        out = out[0]
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        got = f"{dtype}{list(shape)}" if shape is not None else repr(out)
        raise ValueError(
            f"minimize: fun must return a real floating-point scalar (shape ()), got {got}; "
            f"reduce it to one number, e.g. with jnp.sum or jnp.mean"
            + ("" if has_aux else ", or return (value, aux) with has_aux=True")
        )


@functools.partial(jax.jit, static_argnames=("fun", "has_aux"))
def _solve(fun, has_aux, solver, params, args, max_steps, tol):
    # Checked while tracing: a call that reuses the compiled solve pays nothing for it.
    _check_objective(fun, params, args, has_aux)

    def value_fn(p):
        out = fun(p, *args)
        return out[0] if has_aux else out

    value_and_grad = jax.value_and_grad(value_fn)
    value, grad = value_and_grad(params)
    value_dtype = value.dtype
    state = solver.init(params)

    def status_of(value, grad, moved, num_steps):
        # ‖∇f‖ is NaN or inf exactly when a coordinate of ∇f is (or ‖∇f‖² overflows): one
        # reduction serves both tests.
        grad_norm = global_norm(grad)
        status = jnp.where(num_steps >= max_steps, MinimizeStatus.MAX_STEPS, _RUNNING)
        status = jnp.where(moved, status, MinimizeStatus.STALLED)
        status = jnp.where(grad_norm <= tol, MinimizeStatus.CONVERGED, status)
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        status = jnp.where(finite, status, MinimizeStatus.NON_FINITE)
        return status.astype(jnp.int32)

    def step(c: _Carry) -> _Carry:
        updates, new_state = solver.update(c.grad, c.state, c.params, value=c.value,
                                           grad=c.grad, value_fn=value_fn)
        new_params = apply_updates(c.params, updates)
        search, search_state = _final_line_search(solver, new_state)
        if search is not None:
            # A step of zero length is the search's, not a zero direction's (that has ∇f = 0).
            moved = search_state.learning_rate != 0
        else:
            moved = _any_nonzero(updates)
        if search is not None and search_state.grad is not None:
            # The search evaluated f and ∇f at new_params, its last trial point.
            new_value, new_grad = search_state.value, search_state.grad
            evals = search_state.info.num_linesearch_steps
        else:
            new_value, new_grad = value_and_grad(new_params)
            evals = jnp.ones([], jnp.int32)
            if search is not None:
                evals = evals + search_state.info.num_linesearch_steps
        new_value = jnp.asarray(new_value).astype(value_dtype)
        new_grad = tree_utils.cast_like(new_grad, c.grad)
        num_steps = c.num_steps + 1
        status = status_of(new_value, new_grad, moved, num_steps)
        # A non-finite next iterate is not taken: the result stays the last finite one. (The
        # state is not rolled back: the solve stops here, and selecting the whole L-BFGS
        # memory would add a kernel per leaf to the compiled loop.)
        take = status != MinimizeStatus.NON_FINITE
        params, value, grad = jax.tree.map(lambda new, old: jnp.where(take, new, old),
                                           (new_params, new_value, new_grad),
                                           (c.params, c.value, c.grad))
        return _Carry(params, new_state, value, grad, num_steps=num_steps,
                      num_fun_evals=c.num_fun_evals + evals.astype(jnp.int32), status=status)

    zero = jnp.zeros([], jnp.int32)
    carry = _Carry(params, state, value, grad, zero, jnp.ones([], jnp.int32),
                   status_of(value, grad, jnp.ones([], bool), zero))
    carry = jax.lax.while_loop(lambda c: c.status == _RUNNING, step, carry)
    aux = None
    num_fun_evals = carry.num_fun_evals
    if has_aux:
        aux = fun(carry.params, *args)[1]
        num_fun_evals = num_fun_evals + 1
    return MinimizeResult(
        params=carry.params, value=carry.value, grad=carry.grad,
        grad_norm=global_norm(carry.grad), num_steps=carry.num_steps,
        num_fun_evals=num_fun_evals, status=carry.status, aux=aux, state=carry.state,
    )


# The default solver (a frozen transformation: one instance serves all).
DEFAULT_SOLVER = lbfgs()


def minimize(fun: Callable[..., Any], params: Params, *, solver: Transformation = DEFAULT_SOLVER,
             args: tuple = (), max_steps: int = 500, tol: float = 1e-6,
             has_aux: bool = False) -> MinimizeResult:
    """Minimises `fun` from `params` with a full-batch solver, in one compiled loop.

        w_{k+1} = w_k + u_k,   (u_k, state) = solver.update(∇f(w_k), state, w_k, value=f(w_k),
                                                           grad=∇f(w_k), value_fn=f)

    until ‖∇f(w_k)‖₂ ≤ tol, max_steps iterations, a non-finite value or gradient (the step that
    produced it is not taken) or a step that changes nothing. The solve is `jax.jit`-compiled
    (keyed on `fun`: pass the same function to reuse the compilation; `args`, `params`, the
    solver's hyperparameters, `max_steps` and `tol` are arguments and change nothing compiled)
    and can itself run under `jax.jit` and `jax.vmap` (many solves at once: each stops on its
    own condition).

    Args:
      fun: the objective, `fun(params, *args)`, returning a real scalar (or `(value, aux)` with
        `has_aux=True`); differentiable with `jax.grad`.
      params: the starting point, any tree of floating-point arrays.
      solver: the transformation stepping from the gradient: `lbfgs()` (default), any chain
        ending in a line search, or any other optimizer (plain gradient steps).
      args: further positional arguments of `fun` (data), traced, not compiled in.
      max_steps: the most iterations.
      tol: the tolerance on the gradient's Euclidean norm.
      has_aux: whether `fun` returns `(value, aux)`; aux at the result's params is returned.

    Returns:
      A `MinimizeResult` (params, value, grad, grad_norm, num_steps, num_fun_evals, status,
      aux, state).

    Raises:
      ValueError: when `fun` does not return a real scalar (checked before the solve).
    """
    if not callable(fun):
        raise TypeError(f"minimize: fun must be callable, got {fun!r}")
    require_transformation(solver, "minimize", "solver")
    check_argument("minimize", "max_steps", max_steps, integer_at_least(0))
    if isinstance(tol, int | float):
        check_argument("minimize", "tol", tol, non_negative)
    if not isinstance(args, tuple):
        raise TypeError(f"minimize: args must be a tuple of fun's further arguments, got "
                        f"{type(args).__name__}")
    tree_utils.check_inexact(params, "minimize", "params")
    return _solve(fun, has_aux, solver, params, args, max_steps, tol)
