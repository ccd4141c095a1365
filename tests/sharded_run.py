"""Runs gradxform on 8 fake CPU devices and prints what it observed as JSON.

tests/test_sharding.py starts it in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8, so the flag never reaches the other tests
(XLA reads it once, when the backend starts).
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradxform as gx
from gradxform.sharding import state_shardings

STEPS = 4
# w is split over the model axis and replicated over the data axis (data parallel); emb is
# split over model on its rows; b is replicated everywhere.
SPECS = {"w": P(None, "model"), "b": P(), "emb": P("model", None)}


def host_params():
    rng = np.random.RandomState(0)
    return {"w": rng.randn(8, 4).astype(np.float32), "b": rng.randn(4).astype(np.float32),
            "emb": rng.randn(16, 6).astype(np.float32)}


def host_grads(step):
    rng = np.random.RandomState(100 + step)
    return {k: rng.randn(*v.shape).astype(np.float32) for k, v in host_params().items()}


def leaf_specs(tree):
    """{path: PartitionSpec as a list without trailing whole dimensions} of arrays or shardings."""
    def spec(x):
        entries = list(x.spec if isinstance(x, NamedSharding) else x.sharding.spec)
        while entries and entries[-1] is None:
            entries.pop()
        return [None if e is None else str(e) for e in entries]

    return {jax.tree_util.keystr(path): spec(x) for path, x in
            jax.tree_util.tree_leaves_with_path(tree)}


def run_single_device(opt):
    """The reference: the same steps on one device."""
    device = jax.devices()[0]
    params = jax.device_put(host_params(), device)
    state = opt.init(params)
    step = jax.jit(lambda g, s, p: opt.update(g, s, p))
    for i in range(STEPS):
        u, state = step(jax.device_put(host_grads(i), device), state, params)
        params = gx.apply_updates(params, u)
    return params, state


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def bitwise_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main():
    out = {"device_count": jax.device_count()}
    opt = gx.adamw(1e-2, weight_decay=0.1)
    ref_params, ref_state = run_single_device(opt)

    for axis_type in (AxisType.Explicit, AxisType.Auto):
        name = axis_type.name.lower()
        mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
        psh = {k: NamedSharding(mesh, s) for k, s in SPECS.items()}
        r = out[name] = {"params": leaf_specs(psh)}
        with jax.set_mesh(mesh):
            params = jax.device_put(host_params(), psh)
            grads = jax.device_put(host_grads(0), psh)

            # Eager init and update: moments and updates keep each param's sharding.
            state = opt.init(params)
            u, state1 = opt.update(grads, state, params)
            r["eager_state_mu"] = leaf_specs(state[0].mu)
            r["eager_state_nu"] = leaf_specs(state[0].nu)
            r["eager_updates"] = leaf_specs(u)

            # Jitted with no sharding asked for.
            state = jax.jit(opt.init)(params)
            u, state1 = jax.jit(opt.update)(grads, state, params)
            r["jit_state_mu"] = leaf_specs(state1[0].mu)
            r["jit_updates"] = leaf_specs(u)

            # Jitted with out_shardings from state_shardings: the layout of the params, then
            # ZeRO-1 (the state split over the data axis too).
            for label, data_axis in (("follow", None), ("zero1", "data")):
                ssh = state_shardings(opt, params, data_axis=data_axis)
                step = jax.jit(lambda g, s, p: opt.update(g, s, p), out_shardings=(psh, ssh))
                p, s = params, jax.jit(opt.init, out_shardings=ssh)(params)
                r[f"{label}_init_mu"] = leaf_specs(s[0].mu)
                for i in range(STEPS):
                    u, s = step(jax.device_put(host_grads(i), psh), s, p)
                    p = gx.apply_updates(p, u)
                r[f"{label}_state_mu"] = leaf_specs(s[0].mu)
                r[f"{label}_state_nu"] = leaf_specs(s[0].nu)
                r[f"{label}_count"] = leaf_specs(s[0].count)
                r[f"{label}_updates"] = leaf_specs(u)
                r[f"{label}_params"] = leaf_specs(p)
                r[f"{label}_w_mu_shard_shape"] = list(s[0].mu["w"].addressable_shards[0].data.shape)
                reference = (ref_params, ref_state)
                r[f"{label}_bitwise_equal_to_single_device"] = bitwise_equal((p, s), reference)
                r[f"{label}_max_abs_diff"] = max_abs_diff((p, s), reference)

    # Data-parallel training (batch split over data) with ZeRO-1 against one device.
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    psh = {k: NamedSharding(mesh, P()) for k in SPECS}
    x = np.random.RandomState(7).randn(32, 8).astype(np.float32)

    def loss(p, x):
        h = jnp.tanh(x @ p["w"] + p["b"])
        return jnp.mean((h @ p["emb"][:4]) ** 2)

    def train_step(p, s, x):
        u, s = opt.update(jax.grad(loss)(p, x), s, p)
        return gx.apply_updates(p, u), s

    with jax.set_mesh(mesh):
        params = jax.device_put(host_params(), psh)
        ssh = state_shardings(opt, params, data_axis="data")
        step = jax.jit(train_step, out_shardings=(psh, ssh))
        p, s = params, jax.jit(opt.init, out_shardings=ssh)(params)
        xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
        for _ in range(STEPS):
            p, s = step(p, s, xs)
        train = {"state_mu": leaf_specs(s[0].mu), "params": leaf_specs(p)}
    device = jax.devices()[0]
    p1 = jax.device_put(host_params(), device)
    s1 = opt.init(p1)
    step1 = jax.jit(train_step)
    for _ in range(STEPS):
        p1, s1 = step1(p1, s1, jax.device_put(x, device))
    train["max_abs_diff"] = max_abs_diff((p, s), (p1, s1))
    train["max_abs_param"] = max(float(np.max(np.abs(np.asarray(v)))) for v in jax.tree.leaves(p1))
    out["train"] = train
    out.update(every_transformation())
    print(json.dumps(out))


def shard_bytes(state, shardings):
    """Bytes of the state that device 0 holds: the sum over leaves of its shard's size."""
    return sum(int(np.prod(sh.shard_shape(x.shape))) * x.dtype.itemsize for x, sh in zip(
        jax.tree.leaves(state), jax.tree.leaves(shardings), strict=True))


def every_transformation():
    """state_shardings for every public transformation (the conformance cases), from the
    abstract params only: no state is allocated and nothing is compiled."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_conformance import CASES

    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    specs = {"dense": {"w": P("model", None), "b": P()}, "scale": P(), "frozen": None,
             "empty": P()}
    params = gx.testing.default_params()
    abstract = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(
        p.shape, p.dtype, sharding=NamedSharding(mesh, s)), params, specs)
    cases, declared = {}, {}
    for name, factory in sorted(CASES.items()):
        opt = factory()
        state = jax.eval_shape(opt.init, abstract)
        r = cases[name] = {"leaves": len(jax.tree.leaves(state))}
        for label, data_axis in (("follow", None), ("zero1", "data")):
            sh = state_shardings(opt, abstract, data_axis=data_axis)
            same = jax.tree.structure(sh) == jax.tree.structure(state)
            leaves = jax.tree.leaves(sh)
            r[f"{label}_named"] = same and all(isinstance(x, NamedSharding) for x in leaves)
            # Every spec fits its leaf (shard_shape raises otherwise), scalars are replicated.
            r[f"{label}_bytes"] = shard_bytes(state, sh) if r[f"{label}_named"] else -1
            r[f"{label}_scalars_replicated"] = all(
                tuple(x.spec) == () for x, s in zip(leaves, jax.tree.leaves(state), strict=True)
                if s.ndim == 0)
            if name in ("scale_by_factored_rms", "scale_by_factored_rms_torch", "adafactor",
                        "scale_by_sm3", "sm3") and label == "follow":
                declared[name] = leaf_specs(sh)

    # Per-device bytes of the optimizer state of a small transformer-like tree, on one device
    # and under ZeRO-1 over 8 devices.
    shapes = {"embed": (8192, 512), "attn": {"qkv": (512, 1536), "out": (1536, 512)},
              "mlp": {"up": (512, 2048), "down": (2048, 512)}, "norm": (512,), "bias": (2048,)}
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(n, int) for n in x)  # noqa: E731
    memory = {}
    for label, n in (("one_device", 1), ("zero1_8", 8)):
        mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n],
                             axis_types=(AxisType.Explicit,))
        replicated = NamedSharding(mesh, P())
        tree = jax.tree.map(lambda s, r=replicated: jax.ShapeDtypeStruct(
            s, jnp.float32, sharding=r), shapes, is_leaf=is_shape)
        for name, opt in (("adamw", gx.adamw(1e-3)), ("adafactor", gx.adafactor(1e-3)),
                          ("muon", gx.muon(0.02))):
            sh = state_shardings(opt, tree, data_axis="data")
            memory.setdefault(name, {})[label] = shard_bytes(jax.eval_shape(opt.init, tree), sh)
    memory["params_bytes"] = sum(4 * int(np.prod(s)) for s in jax.tree.leaves(
        shapes, is_leaf=is_shape))
    return {"cases": cases, "declared": declared, "memory": memory}


if __name__ == "__main__":
    main()
