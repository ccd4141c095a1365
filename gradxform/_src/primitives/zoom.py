"""The zoom line search: a step size satisfying the strong Wolfe conditions (Nocedal & Wright,
Algorithms 3.5 and 3.6), with Hager & Zhang's approximate decrease criterion near a minimum.

Each trial evaluates f and ∇f once. The search has two phases, an interval search that grows η
until an interval [low, high] must hold an acceptable step, then a zoom that shrinks it by cubic,
quadratic or bisection steps. Both phases are one loop: every iteration computes both phases'
next trial step (a few scalar operations), keeps the one of the phase it is in, evaluates the
objective there, and updates both phases' bookkeeping with scalar selects. The objective and its
gradient therefore appear once in the compiled loop (optax's search branches between two
functions that each contain them, and steps to the safeguarded point in a third), which is what
most of the compile time of an L-BFGS solve is spent on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.primitives.linesearch import (
    at_least_one,
    compilable,
    cond_print,
    conj,
    objective_arguments,
    scalar_dtype,
)
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import (
    check_argument,
    constant,
    in_interval,
    integer_at_least,
    non_negative,
    or_infinity,
    positive,
    static,
)
from gradxform._src.protocol.transformation import Transformation


class ZoomLinesearchInfo(NamedTuple):
    """`num_linesearch_steps`: evaluations of f and ∇f in the last search; `decrease_error`,
    `curvature_error`: how far its step misses the sufficient decrease and the curvature
    condition (0 where satisfied)."""

    num_linesearch_steps: Any
    decrease_error: Any
    curvature_error: Any


class ScaleByZoomLinesearchState(NamedTuple):
    """`learning_rate`: the last step size found; `value`, `grad`: f and ∇f at the point it
    stepped to (for `value_and_grad_from_state`); `info`: diagnostics."""

    learning_rate: Any
    value: Any
    grad: Any
    info: ZoomLinesearchInfo


# The search's bookkeeping is a table of points (η, f(η), f'(η)), one row each: the last trial,
# the two ends of the bracket (f(low) ≤ f(high); low need not be below high), the third point
# of the cubic interpolation, and the best step with sufficient decrease seen (kept in case the
# curvature condition cannot be met), and a row of the last trial's two errors. Each iteration
# appends the new trial and its errors to the table and picks every row of the next table from
# it by index: one gather, where selecting twenty scalars one by one compiles to twenty kernels.
LAST, LOW, HIGH, CUBIC, SAFE, ERRORS, NEW, NEW_ERRORS = range(8)
_ROWS = {"LAST": LAST, "LOW": LOW, "HIGH": HIGH, "CUBIC": CUBIC, "SAFE": SAFE,
         "ERRORS": ERRORS, "NEW": NEW, "NEW_ERRORS": NEW_ERRORS}
_NUM_ROWS = ERRORS + 1

# The phase of the search, one int: interval search, zoom, done, failed.
SEARCHING, ZOOMING, DONE, FAILED = range(4)


def _rows(**sources: str) -> np.ndarray:
    """The source row of every row of the next table, by name (rows not named stay)."""
    choice = np.arange(_NUM_ROWS)
    for row, source in sources.items():
        choice[_ROWS[row]] = _ROWS[source]
    return choice


def _assign(choice, pred, **sources: str):
    """`choice` with the named rows taken from their sources where `pred` holds."""
    mask = np.zeros(_NUM_ROWS, bool)
    values = np.zeros(_NUM_ROWS, np.int32)
    for row, source in sources.items():
        mask[_ROWS[row]] = True
        values[_ROWS[row]] = _ROWS[source]
    return jnp.where(pred & mask, values, choice)


class _ZoomCarry(NamedTuple):
    count: Any
    phase: Any
    points: Any     # [_NUM_ROWS, 3]
    grad: Any       # ∇f at the last trial
    safe_grad: Any  # ∇f at the safe step


def cubic_minimizer(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a
    (NaN where there is none), as scipy's line search computes it."""
    C = fpa
    db = b - a
    dc = c - a
    denom = (db * dc) ** 2 * (db - dc)
    d1 = jnp.stack([jnp.stack([dc ** 2, -(db ** 2)]), jnp.stack([-(dc ** 3), db ** 3])])
    A, B = jnp.dot(d1, jnp.stack([fb - fa - C * db, fc - fa - C * dc]),
                   precision=jax.lax.Precision.HIGHEST) / denom
    radical = B * B - 3.0 * A * C
    return a + (-B + jnp.sqrt(radical)) / (3.0 * A)


def quadratic_minimizer(a, fa, fpa, b, fb):
    """The critical point of the quadratic through (a, fa), (b, fb) with slope fpa at a."""
    B = (fb - fa - fpa * (b - a)) / ((b - a) ** 2)
    return a - fpa / (2.0 * B)


def _where(pred, new, old):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), new, old)


@pytree_dataclass(positional=10)
class scale_by_zoom_linesearch(Transformation):
    """Zoom line search for a step size η satisfying the strong Wolfe conditions along u:

        f(w + η u) ≤ f(w) + c₁ η ⟨u, ∇f(w)⟩ + ε                (sufficient decrease)
        |⟨∇f(w + η u), u⟩| ≤ c₂ |⟨∇f(w), u⟩| + ε                (curvature)

    and the updates η u. Near a minimum, where f(w + η u) ≤ f(w) + c₃ |f(w)|, the decrease
    may instead be the approximate one of Hager & Zhang, ⟨∇f(w + η u), u⟩ ≤ (2c₁ - 1) ⟨∇f(w), u⟩,
    which rounding cannot defeat (the exact one resolves differences of f only down to
    √ε_machine); `approx_dec_rtol=None` keeps the exact criterion alone. The search grows η by
    `increase_factor` from the initial guess until an interval must hold an acceptable step,
    then shrinks it (cubic, quadratic or bisection steps). If it runs out of steps, or the
    interval gets narrower than `stepsize_precision`, it takes the best step with sufficient
    decrease seen (or, with none, its last trial). `curv_rtol=inf` drops the curvature condition
    (a backtracking search with interpolated trials).

    Args:
      max_linesearch_steps: the most evaluations of f and ∇f per search.
      max_learning_rate: the largest η tried (None: no bound).
      tol: ε ≥ 0, the tolerance of both criteria.
      increase_factor: growth of η in the interval search, > 1.
      slope_rtol: c₁ ∈ [0, 1).
      curv_rtol: c₂ ≥ 0 (inf: no curvature condition).
      approx_dec_rtol: c₃ ≥ 0, or None for the exact decrease criterion only.
      stepsize_precision: the interval width below which a step with sufficient decrease is
        accepted without the curvature condition.
      initial_guess_strategy: "keep" starts each search at the last step size (suits gradient
        descent); "one" at η = 1 (suits Newton and quasi-Newton directions such as L-BFGS').
      verbose: print a diagnostic when a search fails.

    Returns:
      A transformation whose `update` takes `value`, `grad` and `value_fn` keyword arguments
      (see `scale_by_backtracking_linesearch`); its state is `ScaleByZoomLinesearchState`,
      whose `value` and `grad` `value_and_grad_from_state` reads.

    References:
      Nocedal & Wright, "Numerical Optimization", 2nd ed., Algorithms 3.5 and 3.6, Springer
      2006.
      Hager & Zhang, "Algorithm 851: CG_DESCENT, a conjugate gradient method with guaranteed
      descent", ACM Transactions on Mathematical Software 32(1), 2006.
    """

    max_linesearch_steps: Any = constant(check=integer_at_least(1))
    max_learning_rate: Any = constant(None, check=positive)
    tol: Any = constant(0.0, check=non_negative)
    increase_factor: Any = constant(2.0, check=or_infinity(at_least_one))
    slope_rtol: Any = constant(1e-4, check=in_interval(0, 1, "[)"))
    curv_rtol: Any = constant(0.9, check=or_infinity(non_negative))
    approx_dec_rtol: Any = constant(1e-6, check=non_negative)
    stepsize_precision: Any = constant(1e-5, check=non_negative)
    initial_guess_strategy: str = static("keep")
    verbose: bool = static(False)

    def _validate(self) -> None:
        check_argument(type(self).__name__, "initial_guess_strategy",
                       self.initial_guess_strategy,
                       lambda s: None if s in ("one", "keep") else "'one' or 'keep'")

    def init(self, params):
        dtype = scalar_dtype(params)
        inf = jnp.full([], jnp.inf, dtype)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones([], dtype), value=inf,
            grad=jax.tree.map(jnp.zeros_like, params),
            info=ZoomLinesearchInfo(num_linesearch_steps=jnp.zeros([], jnp.int32),
                                    decrease_error=inf, curvature_error=inf),
        )

    # The two criteria, as errors: 0 where satisfied, inf where the value or slope is NaN.
    def _decrease_error(self, stepsize, value_step, slope_step, value_init, slope_init):
        error = value_step - value_init - self.slope_rtol * stepsize * slope_init
        if self.approx_dec_rtol is not None:
            approx_error = slope_step - (2 * self.slope_rtol - 1.0) * slope_init
            near_minimum = value_step - value_init - self.approx_dec_rtol * jnp.abs(value_init)
            error = jnp.minimum(jnp.maximum(approx_error, near_minimum), error)
        error = jnp.maximum(error, 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    def _curvature_error(self, slope_step, slope_init):
        error = jnp.maximum(jnp.abs(slope_step) - self.curv_rtol * jnp.abs(slope_init), 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    def update(self, updates, state, params=None, *, value=None, grad=None, value_fn=None,
               **extra_args):
        owner = type(self).__name__
        fn_kwargs = objective_arguments(owner, updates, params, value, grad, value_fn, extra_args)
        search = _search_compiled if compilable(value_fn, fn_kwargs) else _search
        stepsize, final_value, final_grad, count, dec_error, curv_error = search(
            self, updates, params, value, grad, state.learning_rate, fn_kwargs,
            value_fn=value_fn)
        new_state = ScaleByZoomLinesearchState(
            learning_rate=stepsize, value=final_value, grad=final_grad,
            info=ZoomLinesearchInfo(num_linesearch_steps=count, decrease_error=dec_error,
                                    curvature_error=curv_error),
        )
        return tree_utils.tree_scale(stepsize, updates), new_state


def _search(ls: scale_by_zoom_linesearch, updates, params, value, grad, learning_rate,
            fn_kwargs: dict, *, value_fn):
    """The search of `ls` from `params` along `updates`: (η, f, ∇f at the step, evaluations, the
    two errors)."""
    dtype = learning_rate.dtype
    as_scalar = lambda x: jnp.asarray(x).astype(dtype)  # noqa: E731
    value_and_grad = jax.value_and_grad(lambda p: value_fn(p, **fn_kwargs))
    max_steps = ls.max_linesearch_steps
    value_init = as_scalar(value)
    slope_init = tree_utils.tree_vdot(updates, grad, dtype)
    if ls.initial_guess_strategy == "one":
        guess = jnp.ones([], dtype)
    else:
        guess = learning_rate

    def keep_going(c):
        return c.phase < DONE

    def step(c):
        last, low, high, cubic_ref, safe = (c.points[i] for i in (LAST, LOW, HIGH, CUBIC,
                                                                  SAFE))
        zooming = c.phase == ZOOMING
        # The interval search's next trial: the guess, then η grown by the factor.
        grown = jnp.where(c.count == 0, guess, ls.increase_factor * last[0])
        if ls.max_learning_rate is not None:
            max_reached = grown >= ls.max_learning_rate
            grown = jnp.minimum(grown, ls.max_learning_rate)
        else:
            max_reached = jnp.zeros([], bool)
        # The zoom's next trial: the cubic's minimizer, else the quadratic's, else the
        # middle, whichever lies well inside the bracket.
        delta = jnp.abs(high[0] - low[0])
        left, right = jnp.minimum(high[0], low[0]), jnp.maximum(high[0], low[0])
        cubic = cubic_minimizer(low[0], low[1], low[2], high[0], high[1], cubic_ref[0],
                                cubic_ref[1])
        use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
        quad = quadratic_minimizer(low[0], low[1], low[2], high[0], high[1])
        use_quad = ~use_cubic & (quad > left + 0.1 * delta) & (quad < right - 0.1 * delta)
        middle = jnp.where(use_cubic, cubic, cubic_ref[0])
        middle = jnp.where(use_quad, quad, middle)
        middle = jnp.where(~use_cubic & ~use_quad, (low[0] + high[0]) / 2.0, middle)
        stepsize = as_scalar(jnp.where(zooming, middle, grown))

        # The one evaluation of this iteration.
        new_value, new_grad = value_and_grad(tree_utils.tree_add_scale(params, stepsize,
                                                                      updates))
        new_value = as_scalar(new_value)
        new_slope = tree_utils.tree_vdot(conj(new_grad), updates, dtype)
        dec_error = ls._decrease_error(stepsize, new_value, new_slope, value_init,
                                         slope_init)
        curv_error = ls._curvature_error(new_slope, slope_init)
        accepted = jnp.maximum(dec_error, curv_error) <= ls.tol
        last_step = c.count + 1 >= max_steps

        # Interval search (Algorithm 3.5): the bracket is (last, new), or (new, last) once
        # the slope turns positive without the value rising.
        s_high = (dec_error > 0.0) | ((new_value >= last[1]) & (c.count > 0))
        s_low = (new_slope >= 0.0) & ~s_high
        s_found = s_high | s_low | accepted
        s_done = accepted | (max_reached & ~s_found)
        search = _rows(LAST="NEW", LOW="LAST", HIGH="NEW", CUBIC="LAST",
                       ERRORS="NEW_ERRORS")
        search = _assign(search, s_low, LOW="NEW", HIGH="LAST", CUBIC="NEW")
        search = _assign(search, dec_error <= ls.tol, SAFE="NEW")

        # Zoom (Algorithm 3.6): the new point replaces low, or high (and when the slope
        # points away from high, high moves to the old low).
        z_high_to_new = (dec_error > 0.0) | (new_value >= low[1])
        z_high_to_low = (new_slope * (high[0] - low[0]) >= 0.0) & ~z_high_to_new
        zoom = _rows(LAST="NEW", LOW="NEW", CUBIC="LOW", ERRORS="NEW_ERRORS")
        zoom = _assign(zoom, z_high_to_new, LOW="LOW", HIGH="NEW", CUBIC="HIGH")
        zoom = _assign(zoom, z_high_to_low, HIGH="LOW", CUBIC="HIGH")
        zoom = _assign(zoom, (dec_error <= ls.tol) & (new_value < safe[1]), SAFE="NEW")

        choice = jnp.where(zooming, zoom, search)
        table = jnp.concatenate([c.points, jnp.stack([
            jnp.stack([stepsize, new_value, new_slope]),
            jnp.stack([dec_error, curv_error, jnp.zeros([], dtype)])])])
        safe_stepsize = table[choice[SAFE], 0]
        done = jnp.where(zooming, accepted, s_done)
        narrow = (delta <= ls.stepsize_precision) & (safe_stepsize > 0.0)
        failed = jnp.where(zooming, last_step | narrow, last_step) & ~done
        # Out of steps: fall back on the best step with sufficient decrease, or, with none
        # and a non-finite last trial, on no step (the safe point starts at η = 0).
        fall_back = failed & ((safe_stepsize > 0.0) | jnp.isinf(dec_error))
        choice = jnp.where(fall_back & (np.arange(_NUM_ROWS) == LAST), choice[SAFE], choice)

        safe_grad = _where(choice[SAFE] == NEW, new_grad, c.safe_grad)
        grad = _where(choice[LAST] == NEW, new_grad,
                      _where(choice[LAST] == SAFE, c.safe_grad, c.grad))
        phase = jnp.where(done, DONE, jnp.where(failed, FAILED, jnp.where(
            zooming | s_found, ZOOMING, SEARCHING)))
        return _ZoomCarry(count=c.count + 1, phase=phase.astype(jnp.int32),
                          points=table[choice],
                          grad=tree_utils.cast_like(grad, c.grad),
                          safe_grad=tree_utils.cast_like(safe_grad, c.safe_grad))

    zero, inf = jnp.zeros([], dtype), jnp.full([], jnp.inf, dtype)
    start = jnp.stack([zero, value_init, slope_init])
    points = jnp.stack([start, start, start, start, start, jnp.stack([inf, inf, zero])])
    carry = _ZoomCarry(count=jnp.zeros([], jnp.int32), phase=jnp.zeros([], jnp.int32),
                       points=points, grad=grad, safe_grad=grad)
    carry = jax.lax.while_loop(keep_going, step, carry)
    stepsize, final_value = carry.points[LAST, 0], carry.points[LAST, 1]
    dec_error, curv_error = carry.points[ERRORS, 0], carry.points[ERRORS, 1]
    if ls.verbose:
        cond_print(carry.phase == FAILED,
                   "scale_by_zoom_linesearch: no step size satisfying both conditions "
                   "after {count} steps; value {value}, slope {slope}, step size "
                   "{stepsize}, decrease error {dec}, curvature error {curv}",
                   count=carry.count, value=value_init, slope=slope_init,
                   stepsize=stepsize, dec=dec_error, curv=curv_error)
    return stepsize, final_value, carry.grad, carry.count, dec_error, curv_error


# Eager calls (a Python loop of updates) then compile the search once per objective.
_search_compiled = jax.jit(_search, static_argnames=("value_fn",))
