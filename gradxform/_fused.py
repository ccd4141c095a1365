"""One-pass optimizer steps on XLA:CPU: a small C kernel called through the XLA FFI.

XLA:CPU compiles a jitted Adam step into three passes over memory (it has no multi-output loop
fusion): 40 bytes per float32 parameter where 28 are needed, about half of the streaming
bandwidth in practice. `make_step` therefore runs Adam, AdamW, Lion and SGD (with momentum)
steps on float32 params through the kernels in `_fused_cpu.c`: one pass, in place, one call for
all the leaves of a tree.

The kernels must not change a single bit: they are the transformations' equations with the
rounding XLA gives them. On first use, the kernel for a recipe is run next to the XLA program on a
test problem and used only if the two agree bit for bit (a different XLA version could round
differently; then the XLA program is used). The C source is compiled on first use with the
system C compiler into a cache directory (`$GRADXFORM_CACHE_DIR`, else `~/.cache/gradxform`);
without a compiler, on other backends or with `GRADXFORM_FUSED_KERNELS=0`, steps run as
compiled by XLA. `status()` says which applies.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gradxform import _tree
from gradxform._base import safe_increment
from gradxform.adam import scale_by_adam
from gradxform.combine import chain
from gradxform.lion import scale_by_lion
from gradxform.momentum import bias_correction, trace
from gradxform.scaling import add_decayed_weights, scale_by_learning_rate

_SOURCE = Path(__file__).with_name("_fused_cpu.c")
_FLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC")
_KINDS = ("adam", "adamw", "lion", "lion_decayed", "sgd", "sgd_decayed")

_lock = threading.Lock()
_status: dict[str, str] = {}


# -- building and loading -------------------------------------------------------------------------


def _cache_dir() -> Path:
    if os.environ.get("GRADXFORM_CACHE_DIR"):
        return Path(os.environ["GRADXFORM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gradxform"


def _cpu_signature() -> str:
    """What -march=native depends on: a library built for one CPU must not run on another."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + platform.processor() + flags


def _compile(compiler: str, flags: tuple[str, ...], out: Path) -> bool:
    include = jax.ffi.include_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        target = Path(tmp) / out.name
        cmd = [compiler, *flags, f"-I{include}", str(_SOURCE), "-o", str(target)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            _status["build"] = f"could not run {compiler}: {e}"
            return False
        if done.returncode != 0:
            _status["build"] = f"{' '.join(cmd)} failed: {done.stderr[-500:]}"
            return False
        os.replace(target, out)  # atomic: concurrent processes see the whole library or none
    return True


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first use and cached), or None where they cannot be had."""
    if os.environ.get("GRADXFORM_FUSED_KERNELS", "1") == "0":
        _status["build"] = "disabled by GRADXFORM_FUSED_KERNELS=0"
        return None
    if platform.system() not in ("Linux", "Darwin"):
        _status["build"] = f"not built on {platform.system()}"
        return None
    compiler = os.environ.get("CC", "cc")
    source = _SOURCE.read_bytes()
    for flags in (_FLAGS + ("-march=native",), _FLAGS):
        key = hashlib.sha256(repr((source, flags, compiler, jax.__version__,
                                   _cpu_signature())).encode()).hexdigest()[:16]
        path = _cache_dir() / f"fused_cpu_{key}.so"
        if path.exists() or _compile(compiler, flags, path):
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                _status["build"] = f"could not load {path}: {e}"
                continue
            for kind in _KINDS:
                name = f"gradxform_{kind}"
                jax.ffi.register_ffi_target(
                    name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu"
                )
            _status["build"] = f"built {path}"
            return lib
    return None


def status() -> dict[str, str]:
    """How the fused kernels stand: whether they were built, and which recipes passed the check."""
    return dict(_status)


# -- recipes ------------------------------------------------------------------------------------


def recipe(optimizer) -> str | None:
    """The kernel that computes `optimizer`'s step, if there is one.

    With their default options (no Nesterov, moments in the params' dtype, no mask, descent):
      chain(scale_by_adam(), [add_decayed_weights()], scale_by_learning_rate())   Adam, AdamW
      chain(scale_by_lion(), [add_decayed_weights()], scale_by_learning_rate())   Lion
      chain([add_decayed_weights()], trace(), scale_by_learning_rate())           SGD, momentum
    """
    if type(optimizer) is not chain:
        return None
    *body, last = optimizer.transforms
    if type(last) is not scale_by_learning_rate or not last.flip_sign or not body:
        return None
    decays = [t for t in body if type(t) is add_decayed_weights]
    cores = [t for t in body if type(t) is not add_decayed_weights]
    if len(cores) != 1 or len(decays) > 1 or any(t.mask is not None for t in decays):
        return None
    core, suffix = cores[0], "_decayed" if decays else ""
    if type(core) is scale_by_adam and body[0] is core and not core.nesterov \
            and core.mu_dtype is None and core.nu_dtype is None:
        return "adamw" if decays else "adam"  # decay after the moments: decoupled
    if type(core) is scale_by_lion and body[0] is core and core.mu_dtype is None:
        return "lion" + suffix
    if type(core) is trace and body[-1] is core and not core.nesterov \
            and core.accumulator_dtype is None:
        return "sgd" + suffix  # decay before the momentum: coupled, as torch's SGD
    return None


def _moments(kind: str) -> tuple[int, tuple[str, ...]]:
    """Which state of the chain holds the moments, and their fields."""
    if kind.startswith("adam"):
        return 0, ("mu", "nu")
    if kind.startswith("lion"):
        return 0, ("mu",)
    return (1 if kind == "sgd_decayed" else 0), ("trace",)


def _scalars(kind: str, optimizer, state) -> jax.Array:
    """The float32 scalars of the step, computed as the transformations compute them."""
    like = jnp.zeros([], jnp.float32)
    ts, ss = optimizer.transforms, state
    f32 = lambda h: jnp.asarray(_tree.coef(h, like), jnp.float32)  # noqa: E731
    neg_lr = -1 * f32(ts[-1].at(ss[-1].count).learning_rate)
    decay = [i for i, t in enumerate(ts[:-1]) if type(t) is add_decayed_weights]
    wd = f32(ts[decay[0]].at(ss[decay[0]].count).weight_decay) if decay else f32(0.0)
    k, _ = _moments(kind)
    h = ts[k].at(ss[k].count)
    if kind.startswith("sgd"):
        first = (ss[k].count == 0).astype(jnp.float32)
        return jnp.stack([f32(h.decay), 1 - f32(h.dampening), wd, neg_lr, first])
    b1, b2 = f32(h.b1), f32(h.b2)
    if kind.startswith("lion"):
        return jnp.stack([b1, 1 - b1, b2, 1 - b2, wd, neg_lr])
    t = safe_increment(ss[k].count)
    r1 = bias_correction(jnp.ones([], jnp.float32), h.b1, t)  # 1 / (1 - β1^t)
    r2 = bias_correction(jnp.ones([], jnp.float32), h.b2, t)
    return jnp.stack([b1, 1 - b1, b2, 1 - b2, f32(h.eps), f32(h.eps_root), wd, neg_lr, r1, r2])


def _empty(tree):
    return jax.tree.map(lambda x: jnp.reshape(x, (-1,))[:0], tree)


# XLA's compile time grows faster than linearly with the aliased operands of one custom call:
# AdamW on 300 leaves compiles in 12 s as one call, in 0.5-0.8 s as calls of 16-64 leaves.
_LEAVES_PER_CALL = 32


def update_and_apply(kind: str, optimizer, grads, state, params):
    """`update_and_apply` through the kernel, or None where the trees do not suit it.

    A call updates the params and moments of up to 32 leaves; the rest of the state (step
    counts) comes from running `optimizer.update` on empty leaves, which costs nothing at run
    time.
    """
    p_leaves, p_def = jax.tree.flatten(params)
    g_leaves, g_def = jax.tree.flatten(grads)
    if g_def != p_def or not p_leaves:
        return None
    if any(jnp.result_type(x) != jnp.float32 for x in p_leaves + g_leaves):
        return None
    k, names = _moments(kind)
    holder = state[k]
    moments = [jax.tree.leaves(getattr(holder, name)) for name in names]
    if any(len(ms) != len(p_leaves) or any(jnp.result_type(m) != jnp.float32 for m in ms)
           for ms in moments):
        return None

    h = _scalars(kind, optimizer, state)
    n = len(p_leaves)
    out = [None] * (n * (1 + len(moments)))
    for lo in range(0, n, _LEAVES_PER_CALL):
        idx = range(lo, min(lo + _LEAVES_PER_CALL, n))
        arrays = [p_leaves[i] for i in idx] + [ms[i] for ms in moments for i in idx]
        shapes = tuple(jax.ShapeDtypeStruct(jnp.shape(x), jnp.float32) for x in arrays)
        res = jax.ffi.ffi_call(
            f"gradxform_{kind}", shapes, input_output_aliases={i: i for i in range(len(arrays))},
            vmap_method="sequential",
        )(*arrays, *[g_leaves[i] for i in idx], h)
        for j, r in enumerate(res):
            out[(j // len(idx)) * n + idx[j % len(idx)]] = r
    new_params = jax.tree.unflatten(p_def, out[:n])

    # The step counts (and any other scalar state) from the transformations themselves.
    empty_holder = holder._replace(**{name: _empty(getattr(holder, name)) for name in names})
    empty_state = state[:k] + (empty_holder,) + tuple(state[k + 1:])
    _, counted = optimizer.update(_empty(grads), empty_state, _empty(params))
    new_holder = counted[k]._replace(**{
        name: jax.tree.unflatten(jax.tree.structure(getattr(holder, name)),
                                 out[n * (j + 1):n * (j + 2)])
        for j, name in enumerate(names)
    })
    return new_params, counted[:k] + (new_holder,) + tuple(counted[k + 1:])


# -- the check that the kernel gives the XLA program's bits ---------------------------------------


def _test_problem(seed: int):
    """Params or gradients spanning many magnitudes, with zeros and signed zeros, in two leaves:
    one split across threads (vector loops and a remainder), one small."""
    rng = np.random.default_rng(seed)
    n = (1 << 18) + 4099
    scale = np.float32(10.0) ** rng.integers(-6, 2, n).astype(np.float32)
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    x[:7] = [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 0.0]
    return {"a": jnp.asarray(x[:-37]), "b": jnp.asarray(x[-37:])}


def verified(kind: str, optimizer) -> bool:
    """Whether the kernel gives bit for bit what XLA gives for this recipe (checked once)."""
    key = f"{kind}: {jax.tree.structure(optimizer)}"
    with _lock:
        if key in _status:
            return _status[key] == "bit-identical to XLA"
        if jax.default_backend() != "cpu" or _library() is None:
            return False
        from gradxform.step import update_and_apply as reference

        leaves, treedef = jax.tree.flatten(optimizer)
        hyper = [jnp.asarray(x) for x in leaves]

        def xla(hyper, p, s, g):
            return reference(jax.tree.unflatten(treedef, hyper), g, s, p)

        def fused(hyper, p, s, g):
            return update_and_apply(kind, jax.tree.unflatten(treedef, hyper), g, s, p)

        params = _test_problem(0)
        a, b = (params, optimizer.init(params)), (params, optimizer.init(params))
        same = True
        for step in range(3):
            g = _test_problem(step + 1)
            a = jax.jit(xla)(hyper, *a, g)
            b = jax.jit(fused)(hyper, *b, g)
            same = same and all(
                np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
            )
        _status[key] = "bit-identical to XLA" if same else "differs from XLA: not used"
        return same
