"""Optimizer-step benchmark: gradxform vs optax vs torch, in one process, on the same trees.

    python benchmarks/optimizer_step.py            # full run (several minutes)
    python benchmarks/optimizer_step.py --quick    # a few minutes (also on a GPU)
    python benchmarks/optimizer_step.py --json     # machine-readable output on stdout
    python benchmarks/optimizer_step.py --smoke    # tiny sizes, seconds (checks that it runs)

An optimizer step is elementwise and memory-bound, so each case reports the time per step
together with the traffic the algorithm needs at the least (bytes per parameter, stated below)
and the fraction of a streaming roofline measured in the same run: a donated in-place scale
x <- c x over a buffer with as many elements as the tree (8 bytes per element). Absolute
numbers vary with the machine and its load; the ratios between libraries measured in the same
run, with their calls interleaved, are the stable figures.

Implementations (rows):
  gradxform          gradxform.make_step(opt): update + apply_updates in one jitted call, each run
                     of elementwise transformations through the vector kernel (XLA:CPU)
  gradxform-xla      the same as compiled by XLA alone (make_step(opt, fused=False))
  gradxform-plain    jax.jit of opt.update + gradxform.apply_updates, as a user writes it
  gradxform-packed   the same with params kept packed (gradxform.pack): one buffer per dtype
  gradxform-flatten  gradxform.flatten(opt) on the unpacked tree (many-leaf tree only)
  optax              jax.jit of optax's update + optax.apply_updates
  optax-flatten      optax.flatten(opt) (many-leaf tree only)
  torch              torch.optim, fused=True where torch has it (else foreach), in place

Timings never gate tests; see benchmarks/README.md for results and what was tried.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gradxform as gx  # noqa: E402
from gradxform._src.fast import kernel
from gradxform._src.fast.packing import flatten, pack
from gradxform._src.fast.step import make_step

try:
    import torch
except ImportError:  # torch is optional: its rows are left out
    torch = None


# -- trees ----------------------------------------------------------------------------------------


def tree_shapes(name: str, smoke: bool) -> dict:
    """Leaf shapes of each benchmark tree (float32)."""
    if name == "big":  # one leaf, 16.8 M params
        return {"w": (64, 64) if smoke else (4096, 4096)}
    if name == "mlp":  # 200 leaves, 16.8 M params: 100 dense layers
        n, (d_in, d_out) = (4, (32, 16)) if smoke else (100, (512, 328))
        return {f"layer{i:03d}": {"w": (d_in, d_out), "b": (d_out,)} for i in range(n)}
    if name == "many":  # 2,000 leaves, 1.0 M params
        n, (d_in, d_out) = (20, (4, 3)) if smoke else (1000, (32, 30))
        return {f"layer{i:04d}": {"w": (d_in, d_out), "b": (d_out,)} for i in range(n)}
    if name == "small":  # one small leaf, 4,096 params
        return {"w": (4, 4) if smoke else (64, 64)}
    raise ValueError(f"unknown tree {name!r}; choose from big, mlp, many, small")


def make_arrays(shapes: dict, seed: int):
    """Params and gradients as numpy float32 trees (the same numbers for every library)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    params = [rng.standard_normal(s, dtype=np.float32) * 0.1 for s in leaves]
    grads = [rng.standard_normal(s, dtype=np.float32) * 1e-3 for s in leaves]
    unflat = lambda xs: jax.tree_util.tree_unflatten(treedef, xs)  # noqa: E731
    return unflat(params), unflat(grads)


# -- optimizers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerCase:
    name: str
    bytes_per_param: int  # least traffic per float32 param per step, from the algorithm
    traffic: str  # how bytes_per_param is counted
    gradxform: Callable
    optax: Callable
    torch: Callable | None  # (params, grads) -> step function, or None where torch has none


def _torch_step(opt_cls, clip=None, **kwargs):
    def build(params, grads):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        try:
            opt = opt_cls(params, fused=True, **kwargs)
            opt.step()
            kind = "fused"
        except (RuntimeError, TypeError, ValueError):
            opt = opt_cls(params, foreach=True, **kwargs)
            kind = "foreach"

        def step():
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            opt.step()

        return step, kind

    return build


def optimizer_cases() -> dict[str, OptimizerCase]:
    lr = 1e-3
    torch_adam = torch_adamw = torch_sgd = torch_clip = None
    if torch is not None:
        torch_sgd = _torch_step(torch.optim.SGD, lr=1e-2, momentum=0.9)
        torch_adam = _torch_step(torch.optim.Adam, lr=lr)
        torch_adamw = _torch_step(torch.optim.AdamW, lr=lr, weight_decay=1e-2)
        torch_clip = _torch_step(torch.optim.Adam, clip=1.0, lr=lr)
    return {
        "sgd_momentum": OptimizerCase(
            "sgd_momentum", 20, "read p g m, write p m",
            lambda: gx.sgd(1e-2, 0.9), lambda: optax.sgd(1e-2, momentum=0.9), torch_sgd,
        ),
        "adam": OptimizerCase(
            "adam", 28, "read p g m v, write p m v",
            lambda: gx.adam(lr), lambda: optax.adam(lr), torch_adam,
        ),
        "adamw": OptimizerCase(
            "adamw", 28, "read p g m v, write p m v",
            lambda: gx.adamw(lr, weight_decay=1e-2),
            lambda: optax.adamw(lr, weight_decay=1e-2), torch_adamw,
        ),
        "lion": OptimizerCase(
            "lion", 20, "read p g m, write p m",
            lambda: gx.lion(1e-4, weight_decay=1e-2),
            lambda: optax.lion(1e-4, weight_decay=1e-2), None,
        ),
        "adam_clip": OptimizerCase(
            "adam_clip", 32, "read g (norm), then read p g m v, write p m v",
            lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.adam(lr)),
            lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr)), torch_clip,
        ),
        **{
            name: OptimizerCase(
                name, traffic_bytes, traffic,
                lambda name=name: getattr(gx, name)(lr), lambda name=name: getattr(optax, name)(lr),
                None,
            )
            for name, traffic_bytes, traffic in (
                ("adabelief", 28, "read p g m s, write p m s"),
                ("yogi", 28, "read p g m v, write p m v"),
                ("adan", 44, "read p g m v n g_prev, write p m v n g_prev"),
                ("signum", 20, "read p g m, write p m"),
                ("nadamw", 28, "read p g m v, write p m v"),
                ("optimistic_adam_v2", 36, "read p g m v r_prev, write p m v r_prev"),
            )
            if hasattr(gx, name) and hasattr(optax, name)
        },
        "adam_bf16_mu": OptimizerCase(
            "adam_bf16_mu", 24, "read p g v (4 B) m (2 B), write p v (4 B) m (2 B)",
            lambda: gx.adam(lr, mu_dtype=jnp.bfloat16),
            lambda: optax.adam(lr, mu_dtype=jnp.bfloat16), None,
        ),
        "adam_bf16_moments": OptimizerCase(
            "adam_bf16_moments", 20, "read p g (4 B) m v (2 B), write p (4 B) m v (2 B)",
            lambda: gx.chain(
                gx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
                gx.scale_by_learning_rate(lr),
            ),
            # optax keeps nu in the params' dtype: 24 B/param for it.
            lambda: optax.adam(lr, mu_dtype=jnp.bfloat16), None,
        ),
    }


# -- timing ---------------------------------------------------------------------------------------


@dataclass
class Runner:
    """One implementation of one case: `call()` runs one step and blocks until it is done."""

    impl: str
    call: Callable[[], None]
    compile_s: float | None = None
    note: str = ""
    times: list = field(default_factory=list)


def _block(tree):
    jax.block_until_ready(tree)


def jax_runner(impl: str, step_fn, params, state, grads, note="") -> Runner:
    """Runs `params, state = step_fn(grads, state, params)`, feeding results back."""
    # make_step's compiled steps are shared by every step it makes: start each implementation
    # from an empty cache so that its first call pays its own compilation.
    gx.clear_caches()
    # A state may hold one array twice (an init that reuses its zeros); donation needs each
    # buffer once.
    box = {"params": params, "state": jax.tree.map(jnp.copy, state)}

    def call():
        box["params"], box["state"] = step_fn(grads, box["state"], box["params"])
        _block((box["params"], box["state"]))

    t0 = time.perf_counter()
    call()  # the first call traces and compiles
    first = time.perf_counter() - t0
    runner = Runner(impl, call, note=note)
    runner.compile_s = first  # corrected to first - median step once timed
    return runner


def plain_step(opt, donate: bool, apply):
    """The step as a user writes it: jit of update + apply_updates, params and state donated."""
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return apply(params, updates), state

    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    return lambda grads, state, params: jitted(params, state, grads)


def optax_step(opt, donate: bool):
    # Donated arguments in the order of the results (params, state): jax pairs donated inputs
    # with outputs of the same shape in order, and any other order costs a copy per buffer.
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    return lambda grads, state, params: jitted(params, state, grads)


def measure(runners: list[Runner], reps: int, min_seconds: float, roof: Runner | None) -> None:
    """Warm-up, then interleaved repetitions (one step of each runner in turn, and three of the
    roofline) until both `reps` rounds and `min_seconds` have passed; medians are taken later.
    The roofline is sampled with each group, so that it sees the conditions they see."""
    rooflines = [] if roof is None else [roof, roof, roof]
    for r in runners + rooflines[:1]:
        for _ in range(2):
            r.call()
    start = time.perf_counter()
    n = 0
    while n < reps or (time.perf_counter() - start < min_seconds and n < 50 * reps):
        for r in runners + rooflines:
            t0 = time.perf_counter()
            r.call()
            r.times.append(time.perf_counter() - t0)
        n += 1


def roofline_runner(n_elements: int) -> Runner:
    """Streaming bandwidth: a donated in-place x <- c x over n float32 elements, 8 B each.

    It runs interleaved with the implementations of each case, so that it sees the same load."""
    scale = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
    box = {"x": jnp.ones((n_elements,), jnp.float32)}

    def call():
        box["x"] = scale(box["x"])
        box["x"].block_until_ready()

    return Runner("roofline", call)


# -- one case -------------------------------------------------------------------------------------


def run_case(tree_name, case: OptimizerCase, donate: bool, smoke: bool, reps: int,
             min_seconds: float, with_torch: bool, variants: bool) -> list[dict]:
    shapes = tree_shapes(tree_name, smoke)
    params_np, grads_np = make_arrays(shapes, seed=0)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params_np))
    n_leaves = len(jax.tree_util.tree_leaves(params_np))
    fresh = lambda tree: jax.tree.map(jnp.array, tree)  # noqa: E731

    runners = []
    opt = case.gradxform()
    params = fresh(params_np)
    runners.append(jax_runner("gradxform", make_step(opt, donate=donate), params,
                              opt.init(params), fresh(grads_np)))
    if variants and donate and kernel.available():
        params = fresh(params_np)
        runners.append(jax_runner("gradxform-xla", make_step(opt, donate=donate, fused=False),
                                  params, opt.init(params), fresh(grads_np)))
    if variants:
        params = fresh(params_np)
        runners.append(jax_runner("gradxform-plain", plain_step(opt, donate, gx.apply_updates),
                                  params, opt.init(params), fresh(grads_np)))
    if n_leaves > 1:
        packed = pack(fresh(params_np))
        runners.append(jax_runner("gradxform-packed", make_step(opt, donate=donate), packed,
                                  opt.init(packed), pack(fresh(grads_np))))
    if variants and tree_name == "many":
        wrapped = flatten(opt)
        params = fresh(params_np)
        runners.append(jax_runner("gradxform-flatten", make_step(wrapped, donate=donate),
                                  params, wrapped.init(params), fresh(grads_np)))
    o = case.optax()
    params = fresh(params_np)
    runners.append(jax_runner("optax", optax_step(o, donate), params, o.init(params),
                              fresh(grads_np)))
    if variants and tree_name == "many":
        of = optax.flatten(case.optax())
        params = fresh(params_np)
        runners.append(jax_runner("optax-flatten", optax_step(of, donate), params,
                                  of.init(params), fresh(grads_np)))
    if with_torch and case.torch is not None and donate:
        tp = [torch.from_numpy(np.array(x)) for x in jax.tree_util.tree_leaves(params_np)]
        tg = [torch.from_numpy(np.array(x)) for x in jax.tree_util.tree_leaves(grads_np)]
        step, kind = case.torch(tp, tg)
        torch_runner = Runner("torch", step, note=kind)
    else:
        torch_runner = None

    roof = roofline_runner(n_params)
    measure(runners, reps, min_seconds, roof)
    if torch_runner is not None:
        # Apart from the JAX steps: torch's OpenMP threads spin for a while after each step and
        # take a core from whatever runs next (measured: 2-4x on the small tree's JAX steps).
        measure([torch_runner], reps, min_seconds, None)
        runners.append(torch_runner)
        time.sleep(0.05)  # let them go to sleep before the next case
    roof_gbps = 8 * n_params / statistics.median(roof.times) / 1e9

    bytes_per_step = case.bytes_per_param * n_params
    medians = {r.impl: statistics.median(r.times) for r in runners}
    rows = []
    for r in runners:
        t = medians[r.impl]
        gbps = bytes_per_step / t / 1e9
        compile_s = None if r.compile_s is None else max(r.compile_s - t, 0.0)
        row = {
            "tree": tree_name, "n_params": n_params, "n_leaves": n_leaves,
            "optimizer": case.name, "donate": donate, "impl": r.impl, "note": r.note,
            "median_ms": t * 1e3,
            "p10_ms": float(np.percentile(r.times, 10)) * 1e3,
            "p90_ms": float(np.percentile(r.times, 90)) * 1e3,
            "reps": len(r.times),
            "bytes_per_param": case.bytes_per_param, "bytes_per_step": bytes_per_step,
            "traffic": case.traffic,
            "gbps": gbps, "roofline_gbps": roof_gbps, "frac_roofline": gbps / roof_gbps,
            "compile_s": compile_s,
        }
        if r.impl.startswith("gradxform"):
            if "optax" in medians:
                row["vs_optax"] = t / medians["optax"]
            if "torch" in medians:
                row["vs_torch"] = t / medians["torch"]
        rows.append(row)
    return rows


def no_donation_slowdown(rows: list[dict]) -> list[dict]:
    """Cases where a transformation is slower with donation than without (median ratio)."""
    by_key = {(r["tree"], r["optimizer"], r["impl"], r["donate"]): r for r in rows}
    out = []
    for (tree, opt, impl, donate), r in by_key.items():
        if donate and (tree, opt, impl, False) in by_key:
            ratio = r["median_ms"] / by_key[(tree, opt, impl, False)]["median_ms"]
            out.append({"tree": tree, "optimizer": opt, "impl": impl,
                        "donated_over_not": ratio})
    return out


# -- output ---------------------------------------------------------------------------------------


def machine() -> dict:
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "python": platform.python_version(),
        "jax": jax.__version__, "optax": optax.__version__,
        "torch": None if torch is None else torch.__version__,
        "gradxform": gx.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "fused_kernels": kernel.status().get("build", "not needed"),
    }


def format_table(rows: list[dict], rooflines: dict) -> str:
    head = (f"{'tree':6} {'optimizer':18} {'don':3} {'impl':18} {'ms/step':>9} {'B/par':>5} "
            f"{'GB/s':>6} {'%roof':>6} {'compile s':>9} {'x optax':>7} {'x torch':>7}")
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        key = (r["tree"], r["optimizer"], r["donate"])
        if last is not None and key != last:
            lines.append("")
        last = key
        fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        impl = r["impl"] + (f" ({r['note']})" if r["note"] else "")
        lines.append(
            f"{r['tree']:6} {r['optimizer']:18} {'yes' if r['donate'] else 'no':3} {impl:18} "
            f"{r['median_ms']:9.3f} {r['bytes_per_param']:5d} {r['gbps']:6.1f} "
            f"{100 * r['frac_roofline']:5.0f}% {fmt(r['compile_s'], '9.2f'):>9} "
            f"{fmt(r.get('vs_optax'), '7.2f'):>7} {fmt(r.get('vs_torch'), '7.2f'):>7}"
        )
    lines.append("")
    lines.append("roofline (donated in-place scale, 8 B/element, measured with each case; median "
                 "over cases): " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rooflines.items()))
    lines.append("x optax, x torch: gradxform's time over theirs (below 1: gradxform is faster); "
                 "compile s: first call minus a median step.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and repetitions")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (checks that it runs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--trees", default=None, help="comma-separated, from big,mlp,many,small")
    parser.add_argument("--optimizers", default=None,
                        help="comma-separated, from " + ",".join(optimizer_cases()))
    parser.add_argument("--no-torch", action="store_true", help="leave torch out")
    args = parser.parse_args(argv)

    cases = optimizer_cases()
    if args.optimizers:
        names = args.optimizers.split(",")
    elif args.smoke:
        names = ["adam"]
    elif args.quick:
        names = ["sgd_momentum", "adam", "adamw", "lion", "adam_clip"] + [
            n for n in ("adabelief", "yogi", "adan") if n in cases]
    else:
        names = list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        parser.error(f"unknown optimizers {unknown}; choose from {sorted(cases)}")
    trees = (args.trees or ("big,many" if args.smoke else "big,mlp,many,small")).split(",")
    reps, min_seconds = (3, 0.0) if args.smoke else (10, 0.2) if args.quick else (30, 1.0)
    # torch's rows are CPU steps: next to JAX on an accelerator they would compare devices.
    with_torch = torch is not None and not args.no_torch and jax.default_backend() == "cpu"
    if with_torch and not args.smoke:
        torch.set_num_threads(os.cpu_count() or 1)

    rows = []
    for tree_name in trees:
        for name in names:
            if name.startswith("adam_bf16") and tree_name != "big":
                continue
            # optax compiles the many-leaf tree for ~15 s per optimizer, and its flatten for
            # ~30 s: --quick runs it for AdamW only, without variants; the full run without
            # donation for AdamW only. --quick runs without donation on the big tree only.
            if args.quick and not args.smoke and tree_name == "many" and name != "adamw":
                continue
            if args.quick and name in ("adabelief", "yogi", "adan") and tree_name != "big":
                continue
            donations = [True]
            if args.quick:
                if tree_name == "big" and name in ("adamw", "lion", "adam_clip"):
                    donations.append(False)  # the cases where donation could hurt
            elif tree_name != "many" or name == "adamw":
                donations.append(False)
            variants = args.smoke or not args.quick or tree_name == "big"
            for donate in donations:
                rows += run_case(tree_name, cases[name], donate, args.smoke, reps, min_seconds,
                                 with_torch, variants)
                if not args.json:
                    print(".", end="", file=sys.stderr, flush=True)
    rooflines = {
        t: statistics.median(r["roofline_gbps"] for r in rows if r["tree"] == t) for t in trees
    }
    if not args.json:
        print(file=sys.stderr)
    report = {"machine": machine(), "rooflines_gbps": rooflines, "rows": rows,
              "donation": no_donation_slowdown(rows)}
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print(f"machine: {report['machine']}")
        print(format_table(rows, rooflines))
        slower = [d for d in report["donation"] if d["donated_over_not"] > 1.05]
        if slower:
            print("slower with donation than without (median ratio > 1.05):")
            for d in slower:
                print(f"  {d['tree']} {d['optimizer']} {d['impl']}: x{d['donated_over_not']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
