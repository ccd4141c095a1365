"""One-pass optimizer steps on XLA:CPU: a small C kernel called through the XLA FFI.

XLA:CPU compiles a jitted Adam step into three passes over memory (it has no multi-output loop
fusion): 40 bytes per float32 parameter where 28 are needed, about half of the streaming
bandwidth in practice. `make_step` therefore runs Adam, AdamW, Lion and SGD (with momentum)
steps on float32 params through the kernels in `_fused_cpu.c`: one pass, in place, one call for
all the leaves of a tree.

The kernels must not change a single bit: they are the transformations' equations with the
rounding XLA gives them. For each recipe and each structure and shape of params, the kernel step
is first run next to the XLA program on random numbers and used only if the two agree bit for
bit (XLA's choice of fused multiply-adds depends on the program and on its version; where the
kernel does not follow it, the XLA program is used). The C source is compiled on first use with the
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

from gradxform._src.composition.combine import chain
from gradxform._src.primitives.adam_family import scale_by_adam
from gradxform._src.primitives.clipping import clip_by_global_norm
from gradxform._src.primitives.moments import bias_correction, trace
from gradxform._src.primitives.scaling import add_decayed_weights, scale_by_learning_rate
from gradxform._src.primitives.sign_momentum import scale_by_lion
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.transformation import safe_increment
from gradxform._src.protocol.updates import apply_updates

_SOURCE = Path(__file__).with_name("kernel_cpu.c")
_FLAGS = ("-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC")
_KINDS = ("adam", "adamw", "lion", "lion_decayed", "sgd", "sgd_decayed", "adam_bf16",
          "adamw_bf16", "adam_bf16_mv", "adamw_bf16_mv")

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


def _flat(transformation, state=None) -> list:
    """(transformation, state) pairs of nested chains, in the order they run."""
    if type(transformation) is chain:
        states = state if state is not None else [None] * len(transformation.transforms)
        return [pair for t, s in zip(transformation.transforms, states, strict=True)
                for pair in _flat(t, s)]
    return [(transformation, state)]


def _map_states(transformation, state, fn):
    """The state with fn(t, s) in place of the state s of each transformation t in the chains."""
    if type(transformation) is chain:
        return tuple(_map_states(t, s, fn)
                     for t, s in zip(transformation.transforms, state, strict=True))
    return fn(transformation, state)


def recipe(optimizer) -> str | None:
    """The kernel that computes `optimizer`'s step, if there is one.

    Chains (nested or not) of these, with their default options (no Nesterov, moments in the
    params' dtype, or Adam's m, or m and v, in bfloat16, no mask, descent), optionally after
    clip_by_global_norm:
      scale_by_adam(), [add_decayed_weights()], scale_by_learning_rate()   Adam, AdamW
      scale_by_lion(), [add_decayed_weights()], scale_by_learning_rate()   Lion
      [add_decayed_weights()], trace(), scale_by_learning_rate()           SGD with momentum
    The result names the kernel, prefixed with "clipped " after clip_by_global_norm.
    """
    if type(optimizer) is not chain:
        return None
    flat = [t for t, _ in _flat(optimizer)]
    prefix = ""
    if flat and type(flat[0]) is clip_by_global_norm:
        prefix, flat = "clipped ", flat[1:]
    if len(flat) < 2:
        return None
    *body, last = flat
    if type(last) is not scale_by_learning_rate or not last.flip_sign:
        return None
    decays = [t for t in body if type(t) is add_decayed_weights]
    cores = [t for t in body if type(t) is not add_decayed_weights]
    if len(cores) != 1 or len(decays) > 1 or any(t.mask is not None for t in decays):
        return None
    core, suffix = cores[0], "_decayed" if decays else ""
    kind = None
    if type(core) is scale_by_adam and body[0] is core and not core.nesterov:
        stored = (_bf16_or_none(core.mu_dtype), _bf16_or_none(core.nu_dtype))
        suffixes = {("", ""): "", ("bf16", ""): "_bf16", ("bf16", "bf16"): "_bf16_mv"}
        if stored in suffixes:  # decay after the moments: decoupled
            kind = ("adamw" if decays else "adam") + suffixes[stored]
    elif type(core) is scale_by_lion and body[0] is core and core.mu_dtype is None:
        kind = "lion" + suffix
    elif type(core) is trace and body[-1] is core and not core.nesterov \
            and core.accumulator_dtype is None:
        kind = "sgd" + suffix  # decay before the momentum: coupled, as torch's SGD
    return None if kind is None else prefix + kind


def _bf16_or_none(dtype) -> str | None:
    """"" for the params' dtype, "bf16" for bfloat16, None for any other moment dtype."""
    if dtype is None:
        return ""
    return "bf16" if jnp.dtype(dtype) == jnp.bfloat16 else None


def _moment_names(kind: str) -> tuple[str, ...]:
    if kind.startswith("adam"):
        return ("mu", "nu")
    return ("mu",) if kind.startswith("lion") else ("trace",)


_CORES = (scale_by_adam, scale_by_lion, trace)


def _scalars(kind: str, pairs, grad_scale, scaled: bool) -> jax.Array:
    """The float32 scalars of the step, computed as the transformations compute them."""
    like = jnp.zeros([], jnp.float32)
    f32 = lambda h: jnp.asarray(tree_utils.coef(h, like), jnp.float32)  # noqa: E731
    lr, lr_state = pairs[-1]
    neg_lr = -1 * f32(lr.at(lr_state.count).learning_rate)
    decays = [(t, s) for t, s in pairs if type(t) is add_decayed_weights]
    wd = f32(decays[0][0].at(decays[0][1].count).weight_decay) if decays else f32(0.0)
    core, core_state = next((t, s) for t, s in pairs if type(t) in _CORES)
    h = core.at(core_state.count)
    if kind.startswith("sgd"):
        first = (core_state.count == 0).astype(jnp.float32)
        return jnp.stack([f32(h.decay), 1 - f32(h.dampening), wd, neg_lr, first, grad_scale,
                          f32(float(scaled))])
    b1, b2 = f32(h.b1), f32(h.b2)
    if kind.startswith("lion"):
        return jnp.stack([b1, 1 - b1, b2, 1 - b2, wd, neg_lr, grad_scale, f32(float(scaled))])
    t = safe_increment(core_state.count)
    r1 = bias_correction(jnp.ones([], jnp.float32), h.b1, t)  # 1 / (1 - β1^t)
    r2 = bias_correction(jnp.ones([], jnp.float32), h.b2, t)
    return jnp.stack([b1, 1 - b1, b2, 1 - b2, f32(h.eps), f32(h.eps_root), wd, neg_lr, r1, r2,
                      grad_scale, f32(float(scaled))])


def _clip_factor(clip, state, new_state) -> jax.Array:
    """clip_by_global_norm's factor c / max(‖g‖, c), as it computes it (checked by `verified`)."""
    norm = new_state.global_norm
    c = tree_utils.coef(clip.at(state.count).max_norm, norm)
    return jnp.asarray(c / jnp.maximum(norm, c), jnp.float32)


def _empty(tree):
    return jax.tree.map(lambda x: jnp.reshape(x, (-1,))[:0], tree)


# Below this many parameters a kernel call costs more than the passes it saves (measured: AdamW
# on 4096 params 25 µs fused, 20 µs by XLA; on 16384 even; on 65536, 60 µs against 215 µs).
MIN_ELEMENTS = 1 << 14
# Above this many leaves the step's time goes to passing leaves in and out, not to the passes
# over memory, and the check (which compiles the step twice) costs more than the kernel saves:
# pack the params (gradxform.pack) instead.
MAX_LEAVES = 256

# XLA's compile time grows faster than linearly with the aliased operands of one custom call:
# AdamW on 300 leaves compiles in 12 s as one call, in 0.5-0.8 s as calls of 16-64 leaves.
_LEAVES_PER_CALL = 32


# XLA compiles leaves of a few elements to scalar code that rounds differently (it contracts
# other products into fused multiply-adds); they are left to XLA.
_SMALL_LEAF = 64


def update_and_apply(recipe_name: str, optimizer, grads, state, params):
    """`update_and_apply` through the kernel, or None where the trees do not suit it.

    A call updates the params and moments of up to 32 leaves; leaves of fewer than 64 elements
    are updated by the XLA program. The global norm of the gradients, when clipped, and the
    rest of the state (step counts) come from the transformations themselves; run on empty
    leaves, they cost nothing at run time.
    """
    kind = recipe_name.removeprefix("clipped ")
    p_leaves, p_def = jax.tree.flatten(params)
    g_leaves, g_def = jax.tree.flatten(grads)
    if g_def != p_def or not p_leaves:
        return None
    if any(jnp.result_type(x) != jnp.float32 for x in p_leaves + g_leaves):
        return None
    pairs = _flat(optimizer, state)
    names = _moment_names(kind)
    core, holder = next((t, s) for t, s in pairs if type(t) in _CORES)
    moments = [jax.tree.leaves(getattr(holder, name)) for name in names]
    # Adam's m (first) is bfloat16 in the _bf16 kinds, and v too in the _bf16_mv ones.
    dtypes = [jnp.bfloat16 if "_bf16" in kind and (k == 0 or kind.endswith("_mv"))
              else jnp.float32 for k in range(len(names))]
    if any(len(ms) != len(p_leaves) or any(jnp.result_type(m) != dt for m in ms)
           for ms, dt in zip(moments, dtypes, strict=True)):
        return None

    clip, rest, rest_state = None, optimizer, state
    grad_scale = jnp.ones([], jnp.float32)
    if recipe_name.startswith("clipped "):
        (clip, clip_state), pairs = pairs[0], pairs[1:]
        _, new_clip_state = clip.update(grads, clip_state, params)  # the global norm
        grad_scale = _clip_factor(clip, clip_state, new_clip_state)
        rest, rest_state = chain(*optimizer.transforms[1:]), tuple(state[1:])
    h = _scalars(kind, pairs, grad_scale, scaled=clip is not None)

    n = len(p_leaves)
    new_p, new_m = list(p_leaves), [list(ms) for ms in moments]
    big = [i for i in range(n) if jnp.size(p_leaves[i]) >= _SMALL_LEAF]
    small = [i for i in range(n) if jnp.size(p_leaves[i]) < _SMALL_LEAF]
    for lo in range(0, len(big), _LEAVES_PER_CALL):
        idx = big[lo:lo + _LEAVES_PER_CALL]
        arrays = [p_leaves[i] for i in idx] + [ms[i] for ms in moments for i in idx]
        shapes = tuple(jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in arrays)
        res = jax.ffi.ffi_call(
            f"gradxform_{kind}", shapes, input_output_aliases={i: i for i in range(len(arrays))},
            vmap_method="sequential",
        )(*arrays, *[g_leaves[i] for i in idx], h)
        for j, i in enumerate(idx):
            new_p[i] = res[j]
            for k in range(len(moments)):
                new_m[k][i] = res[(k + 1) * len(idx) + j]
    if small:
        # The XLA program on those leaves alone (as lists), the clip's factor applied as it is.
        sub_g = [g_leaves[i] for i in small]
        if clip is not None:
            sub_g = [g * tree_utils.coef(grad_scale, g) for g in sub_g]
        sub_p = [p_leaves[i] for i in small]

        def subset(t, s):
            return s._replace(**{name: [ms[i] for i in small]
                                 for name, ms in zip(names, moments, strict=True)}) \
                if t is core else s

        updates, sub_state = rest.update(sub_g, _map_states(rest, rest_state, subset), sub_p)
        stepped_p = apply_updates(sub_p, updates)
        sub_holder = next(s for t, s in _flat(rest, sub_state) if t is core)
        for j, i in enumerate(small):
            new_p[i] = stepped_p[j]
            for k, name in enumerate(names):
                new_m[k][i] = getattr(sub_holder, name)[j]

    new_params = jax.tree.unflatten(p_def, new_p)
    new_moments = {
        name: jax.tree.unflatten(jax.tree.structure(getattr(holder, name)), new_m[k])
        for k, name in enumerate(names)
    }

    # The step counts (and any other scalar state) from the transformations themselves.
    def emptied(t, s):
        return s._replace(**{name: _empty(getattr(s, name)) for name in names}) if t is core else s

    _, counted = optimizer.update(_empty(grads), _map_states(optimizer, state, emptied),
                                  _empty(params))

    def stepped(t, s):
        if t is core:
            return s._replace(**new_moments)
        return new_clip_state if t is clip else s

    return new_params, _map_states(optimizer, counted, stepped)


# -- the check that the kernel gives the XLA program's bits ---------------------------------------


def _random_like(tree, seed: int):
    """Float32 arrays shaped like the leaves of `tree`, of magnitudes from 1e-6 to 10, with
    zeros, signed zeros, tiny and subnormal numbers at random places."""
    special = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 3.0, -3.0], np.float32)
    powers = (10.0 ** np.arange(-6, 2)).astype(np.float32)
    leaves, treedef = jax.tree.flatten(tree)
    sizes = [int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves]
    total = sum(sizes)
    rng = np.random.default_rng(seed)
    m = min(total, 1 << 20)  # a random block, repeated over larger trees (it is much faster)
    v = rng.standard_normal(m, dtype=np.float32) * powers[rng.integers(0, 8, m, np.int8)]
    at = rng.integers(0, 100, m, np.int8) == 0
    v[at] = rng.choice(special, int(at.sum()))
    v = np.resize(v, total)
    starts = np.cumsum([0] + sizes)
    return jax.tree.unflatten(treedef, [
        jnp.asarray(v[a:b].reshape(np.shape(x))) for a, b, x in zip(starts, starts[1:], leaves)
    ])


def _same_bits(a, b) -> bool:
    """Whether two trees hold the same bits (so -0 differs from 0, and NaNs compare)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if not np.array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8)):
            return False
    return True


_verdicts: dict = {}
_examples: dict = {}  # (recipe, optimizer structure) -> concrete hyperparameters to check with


def remember(recipe_name: str, treedef, hyper) -> None:
    """Keeps concrete hyperparameter values of a recipe, for `suits` to check the kernel with.

    The compiled step receives its hyperparameters as traced arguments; the check runs the step
    on numbers, so it takes the values of the first optimizer of that structure (any valid
    values do: they are arguments of both programs, which are checked to round alike)."""
    if not any(isinstance(x, jax.core.Tracer) for x in hyper):
        _examples.setdefault((recipe_name, treedef), hyper)


def suits(recipe_name: str, treedef, params, grads) -> bool:
    """Whether the kernel is used for a step of these params (they may be tracers: it is
    decided when the step is traced, so a compiled step carries no check at run time).

    Used where the tree is large enough for the kernel to pay (`MIN_ELEMENTS`), has few
    enough leaves (`MAX_LEAVES`), and the kernel gives the XLA program's bits (`verified`)."""
    leaves = jax.tree.leaves(params)
    if sum(int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves) < MIN_ELEMENTS \
            or len(leaves) > MAX_LEAVES:
        return False
    hyper = _examples.get((recipe_name, treedef))
    if hyper is None:
        return False
    return verified(recipe_name, jax.tree.unflatten(treedef, hyper), params, grads)


def verified(recipe_name: str, optimizer, params, grads) -> bool:
    """Whether the kernel step gives bit for bit what the XLA program gives for this step.

    Checked once for each recipe and each structure and shapes of params and gradients (which
    may be tracers: only their shapes are used): both programs are compiled for them and run
    two steps on random numbers. XLA:CPU rounds with fused multiply-adds whose choice depends on
    the program (and on the XLA version); the kernel follows the choices seen, and is not used
    where they differ.
    """
    leaves = jax.tree.leaves((params, grads))
    key = (recipe_name, jax.tree.structure(optimizer), jax.tree.structure((params, grads)),
           tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves))
    if key in _verdicts:
        return _verdicts[key]
    with _lock:
        if key not in _verdicts:
            same = jax.default_backend() == "cpu" and _library() is not None \
                and _agrees(recipe_name, optimizer, params, grads)
            _verdicts[key] = same
            if _library() is not None:
                _status[recipe_name] = "bit-identical to XLA" if same else \
                    "differs from XLA for some params: the XLA program is used for those"
    return _verdicts[key]


def _xla_step(treedef, hyper, params, state, grads):
    optimizer = jax.tree.unflatten(treedef, hyper)
    updates, state = optimizer.update(grads, state, params)
    return apply_updates(params, updates), state


def _kernel_step(treedef, recipe_name, hyper, params, state, grads):
    optimizer = jax.tree.unflatten(treedef, hyper)
    stepped = update_and_apply(recipe_name, optimizer, grads, state, params)
    return stepped if stepped is not None else _xla_step(treedef, hyper, params, state, grads)


# The two programs the check compares: make_step's step without and with the kernel (without
# its check, which would otherwise run again while the step it checks is traced).
_xla_program = jax.jit(_xla_step, static_argnums=0, donate_argnums=(2, 3))
_kernel_program = jax.jit(_kernel_step, static_argnums=(0, 1), donate_argnums=(3, 4))


def _agrees(recipe_name: str, optimizer, params, grads) -> bool:
    leaves, treedef = jax.tree.flatten(optimizer)
    # Run on numbers even when called while a step is traced (params and grads are tracers
    # there; only their shapes are used).
    with jax.ensure_compile_time_eval():
        hyper = [jnp.asarray(x) for x in leaves]
        p = _random_like(params, 0)
        xla = (p, optimizer.init(p))
        fused = (jax.tree.map(jnp.copy, p), optimizer.init(p))
        for i in range(2):  # from the initial state, then from a state of random-looking moments
            g = _random_like(grads, i + 1)
            xla = _xla_program(treedef, hyper, *xla, g)
            fused = _kernel_program(treedef, recipe_name, hyper, *fused, g)
            if not _same_bits(xla, fused):
                return False
    return True
