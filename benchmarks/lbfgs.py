"""Full-batch L-BFGS: gradxform.minimize against scipy's L-BFGS-B and optax's lbfgs, in one run.

    python benchmarks/lbfgs.py            # the three problems below (a few minutes on 2 cores)
    python benchmarks/lbfgs.py --quick    # smaller logistic regressions, fewer repeats
    python benchmarks/lbfgs.py --json     # machine-readable output on stdout

Problems (float64 throughout):
  rosenbrock      the 100-dimensional Rosenbrock function from (-1.2, 1, -1.2, 1, ...)
  logistic        L2-regularised logistic regression (λ = 1e-3), 1,000 synthetic examples with
                  100 standard normal features, labels from a noisy linear model
  logistic-10k    the same with 10,000 features (2,000 examples): time and memory per iteration

Solvers (rows):
  gradxform  gx.minimize(f, w0, solver=gx.lbfgs(), tol=...): one compiled lax.while_loop
  optax      optax.lbfgs() in the loop optax's documentation writes (value_and_grad_from_state,
             a jitted lax.while_loop stopping on the same gradient norm)
  scipy      scipy.optimize.minimize(method="L-BFGS-B") with numpy value and gradient

Columns: iterations; evaluations of f and ∇f (optax's loop does not count them); f*; whether
f* is scipy's minimum to 1e-8 relative to max(1, |f*|); the compiled solve (median of repeats,
the program already compiled, the three solvers' calls interleaved); the first call (tracing,
compilation and the solve, with every cache cleared); and the compile seconds alone
(`jax.jit(...).lower(...).compile()`, separately from tracing). Memory: the compiled solve's
temporaries and outputs (XLA's memory analysis) against the peak of scipy's allocations
(tracemalloc).
Timings on a shared machine move with its load; the ratios measured in the same run are the
figures to compare. numpy's BLAS runs on one thread (OPENBLAS_NUM_THREADS=1 unless set): on a
loaded machine its threads wait on each other, and scipy's 100-dimensional Rosenbrock solve
took 0.75-2.9 s with them against 0.055 s without.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import scipy.optimize  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gradxform as gx  # noqa: E402
from gradxform._src.solvers import full_batch  # noqa: E402

MAX_STEPS = 5000


# -- problems -----------------------------------------------------------------------------------


def rosenbrock_problem():
    def f(x):
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    x0 = np.tile([-1.2, 1.0], 50)
    return dict(name="rosenbrock", f=f, x0=x0, tol=1e-8,
                numpy=(scipy.optimize.rosen, scipy.optimize.rosen_der))


def logistic_problem(name: str, n: int, d: int, l2: float, tol: float):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    w_true = rng.normal(size=d)
    y = np.where(x @ w_true + 0.5 * rng.normal(size=n) > 0, 1.0, -1.0)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def f(w):
        return jnp.mean(jnp.logaddexp(0.0, -yj * (xj @ w))) + 0.5 * l2 * jnp.sum(w * w)

    def f_np(w):
        return np.mean(np.logaddexp(0.0, -y * (x @ w))) + 0.5 * l2 * np.dot(w, w)

    def g_np(w):
        margin = -y * (x @ w)
        return x.T @ (-y * scipy.special.expit(margin)) / n + l2 * w

    return dict(name=name, f=f, x0=np.zeros(d), tol=tol, numpy=(f_np, g_np))


# -- solvers ------------------------------------------------------------------------------------


def optax_solver(f, tol):
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(f)

    def run(w0):
        def step(carry):
            w, state = carry
            value, grad = value_and_grad(w, state=state)
            updates, state = opt.update(grad, state, w, value=value, grad=grad, value_fn=f)
            return optax.apply_updates(w, updates), state

        def continuing(carry):
            _, state = carry
            count = optax.tree.get(state, "count")
            grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
            return (count == 0) | ((count < MAX_STEPS) & (grad_norm >= tol))

        w, state = jax.lax.while_loop(continuing, step, (w0, opt.init(w0)))
        return w, optax.tree.get(state, "value"), optax.tree.get(state, "count")

    return run


def _allocated(mem):
    """Bytes a compiled solve allocates besides its arguments: temporaries and outputs (the
    L-BFGS memory is a temporary of optax's loop, an output of minimize, which returns the
    state)."""
    return None if mem is None else int(mem.temp_size_in_bytes + mem.output_size_in_bytes)


def fresh(f):
    """A new function object computing f: a first call that finds nothing cached."""
    return lambda w: f(w)


def _first_call_and_compile(make_call, lower):
    """(seconds of a first call, its result, trace seconds, compile seconds, compiled), each
    measured with every cache cleared: `make_call()` builds a call on a fresh function,
    `lower()` lowers a fresh one."""
    gx.clear_caches()
    jax.clear_caches()
    call = make_call()
    t = time.perf_counter()
    out = jax.block_until_ready(call())
    first = time.perf_counter() - t
    jax.clear_caches()
    t = time.perf_counter()
    lowered = lower()
    trace = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    return first, call, out, trace, time.perf_counter() - t, compiled


def run_problem(problem, repeats):
    f, tol, x0 = problem["f"], problem["tol"], jnp.asarray(problem["x0"])

    # scipy: numpy value and gradient. Its gtol bounds max|g_i|: tol/√d makes ‖g‖₂ ≤ tol as the
    # others stop at (ftol=0 leaves the stop to gtol).
    f_np, g_np = problem["numpy"]
    options = dict(maxiter=MAX_STEPS, gtol=tol / np.sqrt(np.size(problem["x0"])), ftol=0.0,
                   maxcor=10)
    sol = lambda: scipy.optimize.minimize(f_np, problem["x0"], jac=g_np,  # noqa: E731
                                          method="L-BFGS-B", options=options)
    t = time.perf_counter()
    res = sol()
    scipy_first = time.perf_counter() - t
    tracemalloc.start()
    sol()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    gx_first, gx_call, r, gx_trace, gx_compile, gx_compiled = _first_call_and_compile(
        lambda: (lambda g: lambda: gx.minimize(g, x0, tol=tol, max_steps=MAX_STEPS))(fresh(f)),
        lambda: full_batch._solve.lower(fresh(f), False, gx.lbfgs(), x0, (), MAX_STEPS, tol))
    ox_first, ox_call, (w, value, count), ox_trace, ox_compile, ox_compiled = \
        _first_call_and_compile(
            lambda: (lambda run: lambda: run(x0))(jax.jit(optax_solver(fresh(f), tol))),
            lambda: jax.jit(optax_solver(fresh(f), tol)).lower(x0))

    # The compiled solves, interleaved so that the three see the same load (compiled again
    # first: measuring the compilations cleared jax's caches).
    jax.block_until_ready((gx_call(), ox_call()))
    times: dict[str, list[float]] = {"gradxform": [], "optax": [], "scipy": []}
    for _ in range(repeats):
        for name, call in (("gradxform", gx_call), ("optax", ox_call), ("scipy", sol)):
            t = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - t)
    solve = {name: statistics.median(ts) for name, ts in times.items()}

    rows = {
        "gradxform": dict(iterations=int(r.num_steps), fun_evals=int(r.num_fun_evals),
                          f=float(r.value), solve_s=solve["gradxform"], first_call_s=gx_first,
                          trace_s=gx_trace, compile_s=gx_compile,
                          memory_bytes=_allocated(gx_compiled.memory_analysis()),
                          status=r.message()),
        "optax": dict(iterations=int(count), fun_evals=None, f=float(value),
                      solve_s=solve["optax"], first_call_s=ox_first, trace_s=ox_trace,
                      compile_s=ox_compile,
                      memory_bytes=_allocated(ox_compiled.memory_analysis())),
        "scipy": dict(iterations=int(res.nit), fun_evals=int(res.nfev), f=float(res.fun),
                      solve_s=solve["scipy"], first_call_s=scipy_first, compile_s=0.0,
                      memory_bytes=peak),
    }
    f_star = float(res.fun)
    for row in rows.values():
        row["same_minimum"] = abs(row["f"] - f_star) <= 1e-8 * max(1.0, abs(f_star))
        row["solve_per_iteration_ms"] = 1e3 * row["solve_s"] / max(row["iterations"], 1)
    return dict(problem=problem["name"], dim=int(np.size(problem["x0"])), rows=rows)


# -- report -------------------------------------------------------------------------------------


def _bytes(n):
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def print_report(results):
    print(f"jax {jax.__version__}, optax {optax.__version__}, scipy {scipy.__version__}, "
          f"backend {jax.default_backend()}, {os.cpu_count()} cpus, float64, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for res in results:
        rows = res["rows"]
        print(f"\n{res['problem']} (dimension {res['dim']})")
        print(f"  {'solver':<10} {'iters':>6} {'evals':>6} {'f*':>23} {'same min':>8} "
              f"{'solve ms':>10} {'ms/iter':>8} {'first call s':>12} {'trace s':>8} "
              f"{'compile s':>9} {'memory':>10}")
        for name in ("gradxform", "optax", "scipy"):
            r = rows[name]
            trace = f"{r['trace_s']:.2f}" if "trace_s" in r else "-"
            evals = "-" if r["fun_evals"] is None else r["fun_evals"]
            print(f"  {name:<10} {r['iterations']:>6} {evals:>6} {r['f']:>23.15e} "
                  f"{'yes' if r['same_minimum'] else 'NO':>8} {1e3 * r['solve_s']:>10.2f} "
                  f"{r['solve_per_iteration_ms']:>8.3f} {r['first_call_s']:>12.2f} "
                  f"{trace:>8} {r['compile_s']:>9.2f} {_bytes(r['memory_bytes']):>10}")
        g, o, s = rows["gradxform"], rows["optax"], rows["scipy"]
        print(f"  gradxform / scipy: solve {g['solve_s'] / s['solve_s']:.2f}x, per iteration "
              f"{g['solve_per_iteration_ms'] / s['solve_per_iteration_ms']:.2f}x, first call "
              f"{g['first_call_s'] / s['first_call_s']:.1f}x")
        print(f"  gradxform / optax: solve {g['solve_s'] / o['solve_s']:.2f}x, first call "
              f"{g['first_call_s'] / o['first_call_s']:.2f}x, compile "
              f"{g['compile_s'] / o['compile_s']:.2f}x")
        print(f"  gradxform status: {g['status']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems, fewer repeats")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 9
    problems = [rosenbrock_problem(),
                logistic_problem("logistic", 1000, 100, 1e-3, 1e-8)]
    if args.quick:
        problems.append(logistic_problem("logistic-2k", 500, 2000, 1e-3, 1e-6))
    else:
        problems.append(logistic_problem("logistic-10k", 2000, 10_000, 1e-3, 1e-6))
    results = [run_problem(p, repeats if p["name"] != "logistic-10k" else 3) for p in problems]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_report(results)


if __name__ == "__main__":
    main()
