/* A vector interpreter for elementwise optimizer steps, called through the XLA FFI C API.
 *
 * XLA:CPU has no multi-output loop fusion, so a jitted Adam step is several passes over memory
 * (m, then v, then the params read the new m and v back). Here one call runs a small register
 * program (the per-element equation of an optimizer, translated from its jaxpr by kernel.py)
 * over the leaves in chunks of a few hundred elements: the inputs of a chunk are read once, every
 * operation is a plain loop over the chunk (which the compiler vectorizes), and the results
 * are written once. The data makes one pass through memory; the registers stay in L1.
 *
 * Arithmetic is float32, one rounding per operation and no fused multiply-adds (the build uses
 * -ffp-contract=off), so results equal a numpy float32 evaluation of the same operations.
 * bfloat16 inputs are widened exactly; a conversion to bfloat16 rounds to nearest even; booleans
 * are 0.0 and 1.0.
 *
 * Arguments: program (int32), scalars (float32), then the inputs of each leaf (leaf after leaf);
 * results: the outputs of each leaf. Results may alias inputs (in place): a chunk is read
 * completely before any of it is written.
 *
 * Program (int32): MAGIC, registers, inputs, outputs, instructions, broadcasts, then
 *   per input:      dtype, register
 *   per output:     dtype, register
 *   per broadcast:  scalar index, register   (the register holds that scalar in every lane)
 *   per instruction: opcode, destination, a, b, c
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xla/ffi/api/c_api.h"

#define MAGIC 0x67784b31 /* "gxK1" */
#define MAX_CHUNK 512 /* elements */
#define MIN_CHUNK 64
/* A chunk's registers take at most this much, a third of a 48 KiB L1 data cache, so that they
 * stay there beside the lines of the inputs and outputs in flight. Measured on AdamW (18
 * registers, 16.8 M params, 2-core AMD EPYC, interleaved with XLA's program, fastest of 100
 * steps): chunks of 512 elements (36 KiB of registers) 12.8-13.1 ms, of 128 (9 KiB) 9.8-11.2
 * ms, XLA's program 11.0-11.6 ms. */
#define REGISTER_BYTES (16 * 1024)
#define PREFETCH 1024 /* elements ahead */
#define MAX_REGISTERS 256
#define MAX_SCALARS 4096

enum { F32 = 0, BF16 = 1 };

/* Opcodes; kernel.py holds the same list. */
enum {
  OP_COPY, OP_NEG, OP_ABS, OP_SIGN, OP_SQRT, OP_RSQRT, OP_EXP, OP_LOG, OP_ROUND_BF16, OP_NOT,
  OP_NONZERO, OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_MAX, OP_MIN, OP_GT, OP_GE, OP_LT, OP_LE, OP_EQ,
  OP_NE, OP_AND, OP_OR, OP_SELECT, OP_MULADD, N_OPS
};

typedef uint32_t __attribute__((may_alias)) u32_alias;

/* Run-time dispatch on the CPU's vector width, never -march=native (the library is built once
 * and runs on any x86-64). */
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(GRADXFORM_NO_CLONES)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

typedef struct {
  int32_t registers, inputs, outputs, instructions, broadcasts;
  int32_t chunk; /* elements per chunk: a power of two in [MIN_CHUNK, MAX_CHUNK] */
  const int32_t *in, *out, *bc, *code;
} Program;

static int parse(const int32_t *prog, int64_t size, Program *p) {
  if (size < 6 || prog[0] != MAGIC) return 0;
  p->registers = prog[1];
  p->inputs = prog[2];
  p->outputs = prog[3];
  p->instructions = prog[4];
  p->broadcasts = prog[5];
  if (p->registers < 1 || p->registers > MAX_REGISTERS || p->inputs < 0 || p->outputs < 1 ||
      p->instructions < 0 || p->broadcasts < 0)
    return 0;
  const int64_t need =
      6 + 2 * ((int64_t)p->inputs + p->outputs + p->broadcasts) + 5 * (int64_t)p->instructions;
  if (size != need) return 0;
  p->chunk = MAX_CHUNK;
  while (p->chunk > MIN_CHUNK && (int64_t)p->chunk * p->registers * 4 > REGISTER_BYTES)
    p->chunk /= 2;
  p->in = prog + 6;
  p->out = p->in + 2 * p->inputs;
  p->bc = p->out + 2 * p->outputs;
  p->code = p->bc + 2 * p->broadcasts;
  const int32_t r = p->registers;
  for (int32_t i = 0; i < p->inputs + p->outputs; ++i) {
    const int32_t dtype = p->in[2 * i], reg = p->in[2 * i + 1]; /* in and out are adjacent */
    if ((dtype != F32 && dtype != BF16) || reg < 0 || reg >= r) return 0;
  }
  for (int32_t i = 0; i < p->broadcasts; ++i)
    if (p->bc[2 * i] < 0 || p->bc[2 * i] >= MAX_SCALARS || p->bc[2 * i + 1] < 0 ||
        p->bc[2 * i + 1] >= r)
      return 0;
  for (int32_t i = 0; i < p->instructions; ++i) {
    const int32_t *c = p->code + 5 * i;
    if (c[0] < 0 || c[0] >= N_OPS) return 0;
    for (int k = 1; k < 5; ++k)
      if (c[k] < 0 || c[k] >= r) return 0;
  }
  return 1;
}

static inline float bf16_bits_to_f32(uint32_t b) {
  const uint32_t u = b << 16;
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

static inline uint32_t f32_to_bf16_bits(float x) { /* nearest even; NaNs stay (quiet) NaNs */
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? ((u >> 16) | 0x40u) : rounded;
}

/* One operation over n elements. Every case is a simple loop that the compiler vectorizes
 * (tests/testvector_kernel.py checks it with -fopt-info-vec), except exp and log: without
 * -ffast-math the C library's expf and logf have no vector versions. */
/* Always inlined, so that each of run_chunk's clones has its own vector width. */
static inline __attribute__((always_inline)) void op(int32_t code, float *d, const float *a,
                                                     const float *b, const float *c, int n) {
  switch (code) {
    case OP_COPY: for (int i = 0; i < n; ++i) d[i] = a[i]; break;
    case OP_NEG: for (int i = 0; i < n; ++i) d[i] = -a[i]; break;
    case OP_ABS: for (int i = 0; i < n; ++i) d[i] = fabsf(a[i]); break;
    case OP_SIGN:
      for (int i = 0; i < n; ++i) d[i] = a[i] > 0.0f ? 1.0f : a[i] < 0.0f ? -1.0f : a[i];
      break;
    case OP_SQRT: for (int i = 0; i < n; ++i) d[i] = sqrtf(a[i]); break;
    case OP_RSQRT: for (int i = 0; i < n; ++i) d[i] = 1.0f / sqrtf(a[i]); break;
    case OP_EXP: for (int i = 0; i < n; ++i) d[i] = expf(a[i]); break;
    case OP_LOG: for (int i = 0; i < n; ++i) d[i] = logf(a[i]); break;
    case OP_ROUND_BF16: {
      const u32_alias *u = (const u32_alias *)a;
      u32_alias *o = (u32_alias *)d;
      for (int i = 0; i < n; ++i) {
        const uint32_t x = u[i];
        const uint32_t nearest = (x + 0x7fffu + ((x >> 16) & 1u)) & 0xffff0000u;
        o[i] = (x & 0x7fffffffu) > 0x7f800000u ? (x | 0x00400000u) & 0xffff0000u : nearest;
      }
      break;
    }
    case OP_NOT: for (int i = 0; i < n; ++i) d[i] = a[i] != 0.0f ? 0.0f : 1.0f; break;
    case OP_NONZERO: for (int i = 0; i < n; ++i) d[i] = a[i] != 0.0f ? 1.0f : 0.0f; break;
    case OP_ADD: for (int i = 0; i < n; ++i) d[i] = a[i] + b[i]; break;
    case OP_SUB: for (int i = 0; i < n; ++i) d[i] = a[i] - b[i]; break;
    case OP_MUL: for (int i = 0; i < n; ++i) d[i] = a[i] * b[i]; break;
    case OP_DIV: for (int i = 0; i < n; ++i) d[i] = a[i] / b[i]; break;
    case OP_MAX: /* XLA's: NaN if either is NaN */
      for (int i = 0; i < n; ++i) d[i] = (a[i] > b[i]) | (a[i] != a[i]) ? a[i] : b[i];
      break;
    case OP_MIN:
      for (int i = 0; i < n; ++i) d[i] = (a[i] < b[i]) | (a[i] != a[i]) ? a[i] : b[i];
      break;
    case OP_GT: for (int i = 0; i < n; ++i) d[i] = a[i] > b[i] ? 1.0f : 0.0f; break;
    case OP_GE: for (int i = 0; i < n; ++i) d[i] = a[i] >= b[i] ? 1.0f : 0.0f; break;
    case OP_LT: for (int i = 0; i < n; ++i) d[i] = a[i] < b[i] ? 1.0f : 0.0f; break;
    case OP_LE: for (int i = 0; i < n; ++i) d[i] = a[i] <= b[i] ? 1.0f : 0.0f; break;
    case OP_EQ: for (int i = 0; i < n; ++i) d[i] = a[i] == b[i] ? 1.0f : 0.0f; break;
    case OP_NE: for (int i = 0; i < n; ++i) d[i] = a[i] != b[i] ? 1.0f : 0.0f; break;
    case OP_AND:
      for (int i = 0; i < n; ++i) d[i] = (a[i] != 0.0f) & (b[i] != 0.0f) ? 1.0f : 0.0f;
      break;
    case OP_OR:
      for (int i = 0; i < n; ++i) d[i] = (a[i] != 0.0f) | (b[i] != 0.0f) ? 1.0f : 0.0f;
      break;
    case OP_SELECT: /* lax.select_n(a, b, c): c where a is true, else b */
      for (int i = 0; i < n; ++i) {
        const float if_false = b[i], if_true = c[i]; /* both read: no branch in the loop */
        d[i] = a[i] != 0.0f ? if_true : if_false;
      }
      break;
    case OP_MULADD: /* a*b + c, rounded twice (the build does not contract it) */
      for (int i = 0; i < n; ++i) d[i] = a[i] * b[i] + c[i];
      break;
    default: break;
  }
}

/* The program on elements [lo, lo + n) of one leaf, n <= chunk. regs: registers * chunk floats,
 * broadcast registers already filled. A float32 input is read where it lies (its register is
 * never written: the program does not reuse input registers); a bfloat16 one is widened into
 * its register. */
CLONES static void run_chunk(const Program *p, float *restrict regs, void *const *in,
                             void *const *out, int64_t lo, int n) {
  float *r[MAX_REGISTERS];
  for (int32_t k = 0; k < p->registers; ++k) r[k] = regs + (int64_t)k * p->chunk;
  for (int32_t k = 0; k < p->inputs; ++k) {
    const int32_t reg = p->in[2 * k + 1];
    if (p->in[2 * k] == F32) {
      r[reg] = (float *)in[k] + lo;
    } else {
      const uint16_t *src = (const uint16_t *)in[k] + lo;
      for (int i = 0; i < n; ++i) r[reg][i] = bf16_bits_to_f32(src[i]);
    }
  }
  for (int32_t k = 0; k < p->instructions; ++k) {
    const int32_t *c = p->code + 5 * k;
    op(c[0], r[c[1]], r[c[2]], r[c[3]], r[c[4]], n);
  }
  for (int32_t k = 0; k < p->outputs; ++k) {
    const float *src = r[p->out[2 * k + 1]];
    if (p->out[2 * k] == F32) {
      memmove((float *)out[k] + lo, src, (size_t)n * sizeof(float)); /* may be its own input */
    } else {
      uint16_t *dst = (uint16_t *)out[k] + lo;
      for (int i = 0; i < n; ++i) dst[i] = (uint16_t)f32_to_bf16_bits(src[i]);
    }
  }
}

/* A step over all leaves, split into parts of about equal size. The calling thread and tasks on
 * XLA's intra-op thread pool claim parts from a counter until none is left. The caller waits
 * only for parts that are running, never for a task still queued (all pool threads may be
 * busy, e.g. with other calls like this one), so it cannot deadlock. A task that starts late
 * finds nothing to do; the last one to finish frees the step. */
typedef struct {
  Program prog;
  const float *scalars;
  int64_t leaves, parts, part_size;
  void **in, **out; /* in[l * inputs + k], out[l * outputs + k] */
  int64_t *start;   /* start[l]: index of leaf l's first element in the concatenation */
  atomic_long next, finished;
  atomic_int refs;
} Step;

static void prefetch(const Program *p, void *const *in, void *const *out, int64_t lo,
                     int64_t n) {
  for (int32_t k = 0; k < p->inputs; ++k) {
    const size_t size = p->in[2 * k] == F32 ? 4 : 2;
    const char *base = (const char *)in[k] + lo * (int64_t)size;
    for (int64_t b = 0; b < n * (int64_t)size; b += 64) __builtin_prefetch(base + b, 0, 3);
  }
  for (int32_t k = 0; k < p->outputs; ++k) {
    const size_t size = p->out[2 * k] == F32 ? 4 : 2;
    const char *base = (const char *)out[k] + lo * (int64_t)size;
    for (int64_t b = 0; b < n * (int64_t)size; b += 64) __builtin_prefetch(base + b, 1, 3);
  }
}

static void run_range(const Step *s, float *regs, int64_t l, int64_t lo, int64_t hi) {
  void *const *in = s->in + l * s->prog.inputs;
  void *const *out = s->out + l * s->prog.outputs;
  const int64_t chunk = s->prog.chunk;
  for (int64_t a = lo; a < hi; a += chunk) {
    const int n = (int)(hi - a < chunk ? hi - a : chunk);
    /* The interpreter reads a chunk in short bursts between long stretches of arithmetic,
     * which the hardware prefetchers do not follow far enough ahead: fetch a later chunk. */
    const int64_t ahead = a + PREFETCH;
    if (ahead < hi) prefetch(&s->prog, in, out, ahead, hi - ahead < chunk ? hi - ahead : chunk);
    run_chunk(&s->prog, regs, in, out, a, n);
  }
}

static void work(Step *s) {
  const Program *p = &s->prog;
  float *regs = (float *)aligned_alloc(64, (size_t)p->registers * p->chunk * sizeof(float));
  if (regs == NULL) abort(); /* a few hundred kilobytes at most */
  for (int32_t k = 0; k < p->broadcasts; ++k) {
    float *r = regs + (int64_t)p->bc[2 * k + 1] * p->chunk;
    const float x = s->scalars[p->bc[2 * k]];
    for (int i = 0; i < p->chunk; ++i) r[i] = x;
  }
  const int64_t total = s->start[s->leaves];
  for (;;) {
    const int64_t k = atomic_fetch_add_explicit(&s->next, 1, memory_order_relaxed);
    if (k >= s->parts) break;
    const int64_t a = k * s->part_size, b = a + s->part_size < total ? a + s->part_size : total;
    int64_t lo = 0, hi = s->leaves; /* the last leaf starting at or before a */
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (s->start[mid] <= a) lo = mid; else hi = mid;
    }
    for (int64_t l = lo; l < s->leaves && s->start[l] < b; ++l) {
      const int64_t from = a > s->start[l] ? a - s->start[l] : 0;
      const int64_t to = (b < s->start[l + 1] ? b : s->start[l + 1]) - s->start[l];
      if (to > from) run_range(s, regs, l, from, to);
    }
    atomic_fetch_add_explicit(&s->finished, 1, memory_order_release);
  }
  free(regs);
}

static void release(Step *s) {
  if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) free(s);
}

static void task(void *data) {
  work((Step *)data);
  release((Step *)data);
}

/* Elements per part: below this, handing a part to another thread costs more than it brings. */
enum { MIN_PART = 1 << 16 };

static XLA_FFI_Error *error(const XLA_FFI_Api *api, const char *message) {
  XLA_FFI_Error_Create_Args args = {XLA_FFI_Error_Create_Args_STRUCT_SIZE, NULL, message,
                                    XLA_FFI_Error_Code_INVALID_ARGUMENT};
  return api->XLA_FFI_Error_Create(&args);
}

static int failed(const XLA_FFI_Api *api, XLA_FFI_Error *err) {
  if (err == NULL) return 0;
  XLA_FFI_Error_Destroy_Args args = {XLA_FFI_Error_Destroy_Args_STRUCT_SIZE, NULL, err};
  api->XLA_FFI_Error_Destroy(&args);
  return 1;
}

static int64_t num_elements(const XLA_FFI_Buffer *b) {
  int64_t n = 1;
  for (int64_t i = 0; i < b->rank; ++i) n *= b->dims[i];
  return n;
}

static XLA_FFI_Error *metadata(XLA_FFI_CallFrame *frame) {
  XLA_FFI_Metadata_Extension *ext = (XLA_FFI_Metadata_Extension *)frame->extension_start;
  ext->metadata->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
  ext->metadata->api_version.extension_start = NULL;
  ext->metadata->api_version.major_version = XLA_FFI_API_MAJOR;
  ext->metadata->api_version.minor_version = XLA_FFI_API_MINOR;
  ext->metadata->traits = 0;
  ext->metadata->state_type_id.type_id = 0; /* stateless */
  return NULL;
}

static XLA_FFI_DataType ffi_dtype(int32_t dtype) {
  return dtype == F32 ? XLA_FFI_DataType_F32 : XLA_FFI_DataType_BF16;
}

static XLA_FFI_Error *gradxform_vector_step(XLA_FFI_CallFrame *frame) {
  const XLA_FFI_Api *api = frame->api;
  if (frame->extension_start != NULL &&
      frame->extension_start->type == XLA_FFI_Extension_Metadata)
    return metadata(frame);
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;

  for (int64_t i = 0; i < frame->args.size; ++i)
    if (frame->args.types[i] != XLA_FFI_ArgType_BUFFER)
      return error(api, "gradxform vector step: arguments must be arrays");
  for (int64_t i = 0; i < frame->rets.size; ++i)
    if (frame->rets.types[i] != XLA_FFI_RetType_BUFFER)
      return error(api, "gradxform vector step: results must be arrays");
  if (frame->args.size < 2) return error(api, "gradxform vector step: no program");
  const XLA_FFI_Buffer *prog_buf = (const XLA_FFI_Buffer *)frame->args.args[0];
  const XLA_FFI_Buffer *scal_buf = (const XLA_FFI_Buffer *)frame->args.args[1];
  if (prog_buf->dtype != XLA_FFI_DataType_S32 || scal_buf->dtype != XLA_FFI_DataType_F32)
    return error(api, "gradxform vector step: program must be int32, scalars float32");
  Program prog;
  if (!parse((const int32_t *)prog_buf->data, num_elements(prog_buf), &prog))
    return error(api, "gradxform vector step: malformed program");
  for (int32_t k = 0; k < prog.broadcasts; ++k)
    if (prog.bc[2 * k] >= num_elements(scal_buf))
      return error(api, "gradxform vector step: program reads past the scalars");
  const int64_t leaves = prog.inputs > 0 ? (frame->args.size - 2) / prog.inputs : 0;
  if (leaves < 1 || frame->args.size != 2 + leaves * prog.inputs ||
      frame->rets.size != leaves * prog.outputs)
    return error(api, "gradxform vector step: wrong number of arguments or results");

  /* One allocation: the step, then its per-leaf pointers and offsets. */
  const size_t per_leaf = (size_t)(prog.inputs + prog.outputs) * sizeof(void *) + sizeof(int64_t);
  Step *s = (Step *)malloc(sizeof(Step) + (size_t)leaves * per_leaf + sizeof(int64_t));
  if (s == NULL) return error(api, "gradxform vector step: out of memory");
  s->prog = prog;
  s->scalars = (const float *)scal_buf->data;
  s->leaves = leaves;
  s->in = (void **)(s + 1);
  s->out = s->in + leaves * prog.inputs;
  s->start = (int64_t *)(s->out + leaves * prog.outputs);
  s->start[0] = 0;
  for (int64_t l = 0; l < leaves; ++l) {
    int64_t n = -1;
    for (int32_t k = 0; k < prog.inputs + prog.outputs; ++k) {
      const int is_in = k < prog.inputs;
      const XLA_FFI_Buffer *b =
          is_in ? (const XLA_FFI_Buffer *)frame->args.args[2 + l * prog.inputs + k]
                : (const XLA_FFI_Buffer *)frame->rets.rets[l * prog.outputs + k - prog.inputs];
      const int64_t m = num_elements(b);
      if (b->dtype != ffi_dtype(prog.in[2 * k]) || (n >= 0 && m != n)) {
        free(s);
        return error(api, "gradxform vector step: an array's dtype or size is not the "
                          "program's");
      }
      n = m;
      if (is_in) s->in[l * prog.inputs + k] = b->data;
      else s->out[l * prog.outputs + k - prog.inputs] = b->data;
    }
    s->start[l + 1] = s->start[l] + n;
  }

  int64_t threads = 0;
  XLA_FFI_ThreadPool_NumThreads_Args nt = {XLA_FFI_ThreadPool_NumThreads_Args_STRUCT_SIZE, NULL,
                                           frame->ctx, &threads};
  if (failed(api, api->XLA_FFI_ThreadPool_NumThreads(&nt))) threads = 0; /* no pool */
  const int64_t total = s->start[leaves];
  int64_t parts = total / MIN_PART;
  if (parts > 4 * threads) parts = 4 * threads; /* a few parts per thread evens out stragglers */
  if (parts < 1) parts = 1;
  s->parts = parts;
  s->part_size = ((total + parts - 1) / parts + MAX_CHUNK - 1) / MAX_CHUNK * MAX_CHUNK;
  atomic_init(&s->next, 0);
  atomic_init(&s->finished, 0);
  const int64_t helpers = parts > 1 ? (threads - 1 < parts - 1 ? threads - 1 : parts - 1) : 0;
  atomic_init(&s->refs, (int)(1 + (helpers > 0 ? helpers : 0)));
  for (int64_t k = 0; k < helpers; ++k) {
    XLA_FFI_ThreadPool_Schedule_Args args = {XLA_FFI_ThreadPool_Schedule_Args_STRUCT_SIZE, NULL,
                                             frame->ctx, task, s};
    if (failed(api, api->XLA_FFI_ThreadPool_Schedule(&args))) release(s);
  }
  work(s);
  while (atomic_load_explicit(&s->finished, memory_order_acquire) < parts) sched_yield();
  release(s);
  return NULL;
}

/* -- the Python module: the handler as a capsule for jax.ffi.register_ffi_target ------------- */

static PyObject *handler(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  return PyCapsule_New((void *)&gradxform_vector_step, NULL, NULL);
}

static PyObject *constants(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  return Py_BuildValue("{s:i,s:i,s:i,s:i,s:i}", "magic", MAGIC, "chunk", MAX_CHUNK, "registers",
                       MAX_REGISTERS, "scalars", MAX_SCALARS, "ops", N_OPS);
}

static PyMethodDef methods[] = {
    {"handler", handler, METH_NOARGS, "The XLA FFI handler of the vector step, as a capsule."},
    {"constants", constants, METH_NOARGS, "The program format's limits and magic number."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "vector_kernel",
                                    "Elementwise optimizer steps as one pass over memory.", -1,
                                    methods};

PyMODINIT_FUNC PyInit_vector_kernel(void) { return PyModule_Create(&module); }
