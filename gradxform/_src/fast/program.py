"""Per-element equations as register programs for the vector kernel (vector_kernel.c).

A per-element function f(scalars, *vectors) -> vectors (the composed equations of a chain's
elementwise transformations, on one element) is traced with `jax.make_jaxpr` on 0-d values and
split in two:

- the operations that read only scalars (1 - β1, bias corrections, casts of hyperparameters)
  stay in JAX: `ScalarPart` evaluates them once per step, inside the step's XLA program;
- the operations that read an element become instructions of a register program that the
  kernel runs over every element, in chunks, in one pass over memory.

Supported element operations: add, sub, mul, div, neg, abs, sign, sqrt, rsqrt, exp, log, max,
min, square, integer_pow, comparisons, and/or/not, select_n of two cases, and conversions
between float32, bfloat16 and bool; nested calls (pjit, custom_jvp_call) are inlined. Element
values are float32, bfloat16 or bool. Anything else raises `Unsupported`, and the caller keeps
the XLA program for that step (the reason is kept for `gradxform._src.fast.kernel.status`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

MAGIC = 0x67784B31
MAX_REGISTERS = 256
MAX_SCALARS = 4096
F32, BF16 = 0, 1

OPS = ("copy neg abs sign sqrt rsqrt exp log round_bf16 not nonzero add sub mul div max min gt "
       "ge lt le eq ne and or select muladd").split()
OP = {name: i for i, name in enumerate(OPS)}

_UNARY = {"neg": "neg", "abs": "abs", "sign": "sign", "sqrt": "sqrt", "rsqrt": "rsqrt",
          "exp": "exp", "log": "log"}
_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "max": "max", "min": "min"}
_COMPARE = {"gt": "gt", "ge": "ge", "lt": "lt", "le": "le", "eq": "eq", "ne": "ne"}
_LOGIC = {"and": "and", "or": "or"}
_INLINE = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
           "custom_vjp_call_jaxpr", "remat", "checkpoint")
_IDENTITY = ("copy", "copy_p", "optimization_barrier")

_FLOAT32, _BFLOAT16, _BOOL = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(bool)


class Unsupported(Exception):
    """The function has an operation or dtype the kernel does not run."""


class _Vector(NamedTuple):
    id: int
    dtype: Any


class _Scalar(NamedTuple):
    id: int  # index into ScalarPart's values


class ScalarPart(NamedTuple):
    """The scalar-only operations, to run in JAX each step: `values(flat_scalars)`."""

    literals: tuple  # (value id, value)
    eqns: tuple  # (primitive, params, input value ids, output value ids)
    used: tuple  # value ids the program reads, in the order of its scalar buffer

    def values(self, flat_scalars) -> jax.Array:
        """The float32 buffer of the scalars the program reads."""
        env: dict[int, Any] = dict(enumerate(flat_scalars))
        for vid, value in self.literals:
            env[vid] = value
        for prim, params, ins, outs in self.eqns:
            res = prim.bind(*[env[i] for i in ins], **params)
            for vid, r in zip(outs, res if prim.multiple_results else [res], strict=True):
                env[vid] = r
        if not self.used:
            return jnp.zeros((1,), jnp.float32)
        return jnp.stack([jnp.asarray(env[i]).astype(jnp.float32) for i in self.used])


class Program(NamedTuple):
    code: np.ndarray  # int32, the format of vector_kernel.c
    scalars: ScalarPart
    input_dtypes: tuple
    output_dtypes: tuple
    instructions: int
    registers: int


def _dtype_code(dtype) -> int:
    dtype = jnp.dtype(dtype)
    if dtype == _FLOAT32:
        return F32
    if dtype == _BFLOAT16:
        return BF16
    raise Unsupported(f"arrays of {dtype} (the kernel reads float32 and bfloat16)")


class _Builder:
    def __init__(self, n_scalars: int):
        self.n_values = n_scalars  # scalar value ids: inputs first
        self.literals: list = []
        self.scalar_eqns: list = []
        self.n_vectors = 0
        self.instrs: list = []  # (op, dst id, operand ids (vector ids, or ('s', scalar id)))
        self.broadcast: dict[int, int] = {}  # scalar value id -> vector id holding it

    def scalar_value(self, value) -> _Scalar:
        vid = self.n_values
        self.n_values += 1
        self.literals.append((vid, value))
        return _Scalar(vid)

    def new_vector(self, dtype) -> _Vector:
        self.n_vectors += 1
        return _Vector(self.n_vectors - 1, jnp.dtype(dtype))

    def as_vector(self, x, dtype=_FLOAT32) -> _Vector:
        if isinstance(x, _Vector):
            return x
        if x.id not in self.broadcast:
            self.broadcast[x.id] = self.new_vector(dtype).id
        return _Vector(self.broadcast[x.id], jnp.dtype(dtype))

    def emit(self, op: str, dtype, *operands) -> _Vector:
        out = self.new_vector(dtype)
        self.instrs.append((OP[op], out.id, tuple(o.id for o in operands)))
        return out


def _read(env, atom, b: _Builder):
    if isinstance(atom, jcore.Literal):
        return b.scalar_value(np.asarray(atom.val))
    return env[atom]


def _walk(jaxpr, consts, args, b: _Builder) -> list:
    env: dict = {}
    for var, c in zip(jaxpr.constvars, consts, strict=True):
        if np.ndim(c) != 0:
            raise Unsupported("a constant array in the equation")
        env[var] = b.scalar_value(np.asarray(c))
    for var, a in zip(jaxpr.invars, args, strict=True):
        env[var] = a
    for eqn in jaxpr.eqns:
        ins = [_read(env, v, b) for v in eqn.invars]
        name = eqn.primitive.name
        if all(isinstance(x, _Scalar) for x in ins) and name not in _INLINE:
            outs = [_Scalar(b.n_values + k) for k in range(len(eqn.outvars))]
            b.n_values += len(eqn.outvars)
            b.scalar_eqns.append((eqn.primitive, dict(eqn.params), tuple(x.id for x in ins),
                                  tuple(o.id for o in outs)))
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
            continue
        if name in _INLINE:
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr",
                                                           eqn.params.get("fun_jaxpr")))
            if inner is None:
                raise Unsupported(f"the call {name} without a jaxpr")
            if hasattr(inner, "jaxpr"):
                outs = _walk(inner.jaxpr, inner.consts, ins, b)
            else:
                outs = _walk(inner, [], ins, b)
        else:
            outs = [_vector_op(eqn, ins, b)]
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [_read(env, v, b) for v in jaxpr.outvars]


def _vector_op(eqn, ins, b: _Builder):
    name = eqn.primitive.name
    out_dtype = jnp.dtype(eqn.outvars[0].aval.dtype)
    if eqn.outvars[0].aval.shape != ():
        raise Unsupported(f"{name} on arrays (the equation must be per element)")

    def floats(xs):
        vs = [b.as_vector(x) for x in xs]
        if any(v.dtype != _FLOAT32 for v in vs) or out_dtype not in (_FLOAT32, _BOOL):
            raise Unsupported(f"{name} on {[str(v.dtype) for v in vs]} (float32 only)")
        return vs

    if name in _IDENTITY:
        return ins[0]
    if name in _UNARY:
        return b.emit(_UNARY[name], out_dtype, *floats(ins))
    if name in _BINARY:
        return b.emit(_BINARY[name], out_dtype, *floats(ins))
    if name == "square":
        (x,) = floats(ins)
        return b.emit("mul", out_dtype, x, x)
    if name == "integer_pow":
        return _integer_pow(b, floats(ins)[0], eqn.params["y"])
    if name in _COMPARE:
        return b.emit(_COMPARE[name], _BOOL, *floats(ins))
    if name in _LOGIC or name == "not":
        vs = [b.as_vector(x, _BOOL) for x in ins]
        if any(v.dtype != _BOOL for v in vs):
            raise Unsupported(f"{name} on integers")
        return b.emit(_LOGIC.get(name, "not"), _BOOL, *vs)
    if name == "select_n":
        if len(ins) != 3:
            raise Unsupported("select_n of more than two cases")
        pred = b.as_vector(ins[0], _BOOL)
        if pred.dtype != _BOOL:
            raise Unsupported("select_n with an integer predicate")
        cases = [b.as_vector(x, out_dtype) for x in ins[1:]]
        if out_dtype not in (_FLOAT32, _BOOL) or any(c.dtype != out_dtype for c in cases):
            raise Unsupported(f"select_n of {out_dtype}")
        return b.emit("select", out_dtype, pred, *cases)
    if name == "convert_element_type":
        (x,) = ins
        src = jnp.dtype(eqn.invars[0].aval.dtype)
        x = b.as_vector(x, src)
        if src == out_dtype or (src in (_BFLOAT16, _BOOL) and out_dtype == _FLOAT32):
            return _Vector(x.id, out_dtype)  # exact: the register holds the same number
        if src == _FLOAT32 and out_dtype == _BFLOAT16:
            return b.emit("round_bf16", _BFLOAT16, x)
        if src in (_FLOAT32, _BFLOAT16) and out_dtype == _BOOL:
            return b.emit("nonzero", _BOOL, x)
        raise Unsupported(f"a conversion from {src} to {out_dtype}")
    raise Unsupported(f"the operation {name}")


def _integer_pow(b: _Builder, x: _Vector, y: int) -> _Vector:
    """x**y by squaring, as XLA computes lax.integer_pow (x*x, (x*x)*x, then by squaring)."""
    if y == 0:
        return b.as_vector(b.scalar_value(np.float32(1.0)))
    if y in (1, 2, 3, -1):
        if y == -1:
            return b.emit("div", _FLOAT32, b.as_vector(b.scalar_value(np.float32(1.0))), x)
        low = x if y == 1 else b.emit("mul", _FLOAT32, x, x)
        return b.emit("mul", _FLOAT32, low, x) if y == 3 else low
    reciprocal, y = y < 0, abs(y)
    acc: _Vector | None = None
    while y > 0:
        if y & 1:
            acc = x if acc is None else b.emit("mul", _FLOAT32, acc, x)
        y >>= 1
        if y > 0:
            x = b.emit("mul", _FLOAT32, x, x)
    assert acc is not None  # y != 0 here, so the loop multiplied x in at least once
    if reciprocal:
        return b.emit("div", _FLOAT32, b.as_vector(b.scalar_value(np.float32(1.0))), acc)
    return acc


def build(fn, scalar_avals, vector_dtypes) -> Program:
    """The program of `fn(flat_scalars, *vectors) -> tuple of vectors` (per element).

    Args:
      fn: the per-element function; `flat_scalars` is a list of 0-d arrays.
      scalar_avals: a ShapeDtypeStruct (shape ()) for each scalar.
      vector_dtypes: the dtype of each vector input (float32 or bfloat16).

    Raises:
      Unsupported: where the kernel cannot run the function.
    """
    in_codes = tuple(_dtype_code(d) for d in vector_dtypes)
    vec_avals = [jax.ShapeDtypeStruct((), d) for d in vector_dtypes]
    closed = jax.make_jaxpr(fn)(list(scalar_avals), *vec_avals)
    n_scalars = len(scalar_avals)
    b = _Builder(n_scalars)
    inputs = [b.new_vector(d) for d in vector_dtypes]
    args = [_Scalar(i) for i in range(n_scalars)] + inputs
    outs = _walk(closed.jaxpr, closed.consts, args, b)
    out_dtypes = tuple(jnp.dtype(v.aval.dtype) for v in closed.jaxpr.outvars)
    out_codes = tuple(_dtype_code(d) for d in out_dtypes)
    outs = [b.as_vector(o, d) for o, d in zip(outs, out_dtypes, strict=True)]
    return _assemble(b, inputs, outs, in_codes, out_codes, vector_dtypes, out_dtypes)


def _fuse_multiply_adds(instrs, outs) -> list:
    """x*y + z as one instruction where x*y is read only by that addition: one loop over the
    chunk instead of two, the same two roundings (the kernel is built without contraction)."""
    reads: dict[int, int] = {}
    for _, _, operands in instrs:
        for o in operands:
            reads[o] = reads.get(o, 0) + 1
    for o in outs:
        reads[o.id] = reads.get(o.id, 0) + 1
    producer = {dst: (op, operands) for op, dst, operands in instrs}
    fused, dropped = [], set()
    for op, dst, operands in instrs:
        if op == OP["add"]:
            for k in (1, 0):  # prefer the right operand: (1 - b1) g + b1 m fuses b1 m
                x, z = operands[k], operands[1 - k]
                made = producer.get(x)
                if made and made[0] == OP["mul"] and reads[x] == 1 and x not in dropped:
                    fused.append((OP["muladd"], dst, (*made[1], z)))
                    dropped.add(x)
                    break
            else:
                fused.append((op, dst, operands))
        else:
            fused.append((op, dst, operands))
    return [ins for ins in fused if ins[1] not in dropped]


def _assemble(b, inputs, outs, in_codes, out_codes, in_dtypes, out_dtypes) -> Program:
    """Registers for the vector values (reused after their last read), and the int32 code."""
    broadcast_ids = set(b.broadcast.values())
    input_ids = {v.id for v in inputs}
    reg: dict[int, int] = {}
    free: list[int] = []
    n_regs = 0

    def allocate(vid):
        nonlocal n_regs
        if free:
            reg[vid] = free.pop()
        else:
            reg[vid], n_regs = n_regs, n_regs + 1

    instrs = _fuse_multiply_adds(b.instrs, outs)
    last_use = {}
    for k, (_, _, operands) in enumerate(instrs):
        for o in operands:
            last_use[o] = k
    for o in outs:
        last_use[o.id] = len(instrs)
    for vid in sorted(broadcast_ids):
        allocate(vid)
    for v in inputs:  # the kernel reads float32 inputs in place: their registers stay theirs
        allocate(v.id)
    code = []
    for k, (op, dst, operands) in enumerate(instrs):
        regs = [reg[o] for o in operands]
        for o in set(operands):
            if last_use.get(o) == k and o not in broadcast_ids and o not in input_ids:
                free.append(reg[o])
        allocate(dst)
        if dst not in last_use:  # a value nothing reads (XLA would drop it too)
            free.append(reg[dst])
        regs = regs + [regs[0]] * (3 - len(regs))  # unused operands: any valid register
        code.append((op, reg[dst], *regs))
    if n_regs > MAX_REGISTERS:
        raise Unsupported(f"{n_regs} registers (at most {MAX_REGISTERS})")
    used = tuple(sorted(b.broadcast, key=lambda s: b.broadcast[s]))
    if len(used) > MAX_SCALARS:
        raise Unsupported(f"{len(used)} scalars (at most {MAX_SCALARS})")
    header = [MAGIC, max(n_regs, 1), len(inputs), len(outs), len(code), len(used)]
    words = list(header)
    for c, v in zip(in_codes, inputs, strict=True):
        words += [c, reg[v.id]]
    for c, v in zip(out_codes, outs, strict=True):
        words += [c, reg[v.id]]
    for k, s in enumerate(used):
        words += [k, reg[b.broadcast[s]]]
    for instr in code:
        words += list(instr)
    scalars = ScalarPart(
        literals=tuple(b.literals), eqns=tuple(b.scalar_eqns), used=used,
    )
    return Program(np.asarray(words, np.int32), scalars, tuple(in_dtypes), tuple(out_dtypes),
                   len(code), max(n_regs, 1))
