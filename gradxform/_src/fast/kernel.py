"""The native vector kernel: loading it, and calling it on the leaves of a tree.

The kernel (vector_kernel.c, built by `pip install` as the extension module `vector_kernel`)
runs a register program (see program.py) over float32 and bfloat16 arrays in one pass, as an
XLA FFI custom call on the CPU. Nothing is compiled when gradxform is imported or a step is
traced; where the extension was not built (no C compiler at install time), on other backends,
or with `GRADXFORM_FUSED_KERNELS=0`, steps run as XLA compiles them. `status()` says which
applies, and why a program was not used.
"""

from __future__ import annotations

import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.fast import program as programs
from gradxform._src.protocol.caches import LRUCache

TARGET = "gradxform_vector_step"

# Leaves per custom call: XLA's compile time grows faster than linearly with the aliased
# operands of one call (measured: 300 leaves in one call, 12 s; in calls of 32, under 1 s).
LEAVES_PER_CALL = 32

_lock = threading.Lock()
_status: dict[str, str] = {}
_registered: bool | None = None


def _native():
    try:
        from gradxform._src.fast import vector_kernel
    except ImportError as e:
        _status["build"] = (
            f"the extension gradxform._src.fast.vector_kernel is not built ({e}); reinstall "
            f"gradxform with a C compiler available (pip install .) to build it"
        )
        return None
    return vector_kernel


def available() -> bool:
    """Whether the kernel can run here: built, registered with XLA, on a CPU backend."""
    global _registered
    if _registered is None:
        with _lock:
            if _registered is None:
                _registered = _register()
    return _registered and jax.default_backend() == "cpu"


def _register() -> bool:
    if os.environ.get("GRADXFORM_FUSED_KERNELS", "1") == "0":
        _status["build"] = "disabled by GRADXFORM_FUSED_KERNELS=0"
        return False
    native = _native()
    if native is None:
        return False
    limits = native.constants()
    if (limits["magic"], limits["registers"], limits["scalars"], limits["ops"]) != (
            programs.MAGIC, programs.MAX_REGISTERS, programs.MAX_SCALARS, len(programs.OPS)):
        _status["build"] = f"the built extension does not match this version of gradxform " \
                           f"({limits}); reinstall gradxform"
        return False
    jax.ffi.register_ffi_target(TARGET, native.handler(), platform="cpu")
    _status["build"] = f"loaded {native.__file__}"
    return True


def status() -> dict[str, str]:
    """How the kernel stands: whether it was loaded, and why a program was not used."""
    available()
    return dict(_status)


def note(key: str, message: str) -> None:
    """Records why a program did not run (read back by `status`)."""
    if len(_status) < 256:
        _status[key] = message


# -- compiled programs, bounded ------------------------------------------------------------------


programs_cache = LRUCache(maxsize=256)  # emptied by gradxform.clear_caches() too


def program_for(key, fn, scalar_avals, vector_dtypes):
    """The program of `fn` (built once per key), or None where the kernel cannot run it."""

    def make():
        try:
            return programs.build(fn, scalar_avals, vector_dtypes)
        except programs.Unsupported as e:
            note(f"program {len(programs_cache)}", f"not run by the kernel: {e}")
            return None

    return programs_cache.get_or_compute(key, make)


# -- the call --------------------------------------------------------------------------------------


def run(prog: programs.Program, scalars: jax.Array, leaves: list[tuple], aliases: tuple[int, ...]
        ) -> list[tuple]:
    """Runs `prog` on each leaf's inputs; returns each leaf's outputs.

    Args:
      prog: the program.
      scalars: its float32 scalar buffer (`prog.scalars.values(...)`).
      leaves: per leaf, its input arrays (all of one size), in the program's order.
      aliases: for each output, the input it overwrites (in place), or -1 for a fresh array.
    """
    code = jnp.asarray(prog.code)
    n_in, n_out = len(prog.input_dtypes), len(prog.output_dtypes)
    results = []
    for lo in range(0, len(leaves), LEAVES_PER_CALL):
        group = leaves[lo:lo + LEAVES_PER_CALL]
        args = [x for ins in group for x in ins]
        shapes = [jax.ShapeDtypeStruct(jnp.shape(ins[0]), d) for ins in group
                  for d in prog.output_dtypes]
        alias_map = {2 + j * n_in + a: j * n_out + k for j in range(len(group))
                     for k, a in enumerate(aliases) if a >= 0}
        out = jax.ffi.ffi_call(TARGET, shapes, input_output_aliases=alias_map,
                               vmap_method="sequential")(code, scalars, *args)
        results += [tuple(out[j * n_out:(j + 1) * n_out]) for j in range(len(group))]
    return results


def element_count(x) -> int:
    return int(np.prod(np.shape(x), dtype=np.int64))
