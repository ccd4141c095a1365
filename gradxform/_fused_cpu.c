/* One-pass optimizer steps for XLA:CPU, called through the XLA FFI C API.
 *
 * XLA:CPU has no multi-output loop fusion, so a jitted Adam step is three passes over memory
 * (m, then v, then the params read the new m and v back): 40 bytes per float32 parameter instead
 * of the 28 that reading p, g, m, v and writing p, m, v takes. These kernels do the whole step in
 * one pass, in place (the outputs alias the inputs).
 *
 * Each line is the transformation's equation with the rounding that XLA:CPU gives it: XLA
 * contracts a product feeding an addition into one fused multiply-add (fmaf), always the left
 * product when both operands are products. gradxform/_fused.py checks on first use that a kernel
 * gives bit for bit what the XLA program gives, and does not use it otherwise.
 *
 * Scalars come in one float32 buffer `h`, computed by the XLA program (see _fused.py):
 *   Adam/AdamW: b1, 1-b1, b2, 1-b2, eps, eps_root, weight decay, -lr, 1/(1-b1^t), 1/(1-b2^t)
 *   Lion:       b1, 1-b1, b2, 1-b2, weight decay, -lr
 */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xla/ffi/api/c_api.h"

enum { ADAM = 0, ADAMW = 1, LION = 2, LION_DECAYED = 3 };

static void adam_range(int kind, float *restrict p, float *restrict m, float *restrict v,
                       const float *restrict g, const float *restrict h, int64_t lo, int64_t hi) {
  const float b1 = h[0], one_minus_b1 = h[1], b2 = h[2], one_minus_b2 = h[3];
  const float eps = h[4], eps_root = h[5], wd = h[6], neg_lr = h[7], r1 = h[8], r2 = h[9];
  if (kind == ADAMW) {
    for (int64_t i = lo; i < hi; ++i) {
      const float gi = g[i];
      const float mi = fmaf(one_minus_b1, gi, b1 * m[i]);      /* m = (1-b1) g + b1 m */
      const float vi = fmaf(one_minus_b2, gi * gi, b2 * v[i]); /* v = (1-b2) g² + b2 v */
      const float d = (mi * r1) / (sqrtf(fmaf(vi, r2, eps_root)) + eps); /* m̂ / (√v̂ + ε) */
      p[i] = fmaf(neg_lr, fmaf(wd, p[i], d), p[i]);            /* p - lr (d + λ p) */
      m[i] = mi;
      v[i] = vi;
    }
  } else {
    for (int64_t i = lo; i < hi; ++i) {
      const float gi = g[i];
      const float mi = fmaf(one_minus_b1, gi, b1 * m[i]);
      const float vi = fmaf(one_minus_b2, gi * gi, b2 * v[i]);
      const float d = (mi * r1) / (sqrtf(fmaf(vi, r2, eps_root)) + eps);
      p[i] = fmaf(neg_lr, d, p[i]);                            /* p - lr d */
      m[i] = mi;
      v[i] = vi;
    }
  }
}

static inline float sign(float x) { return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x; }

static void lion_range(int kind, float *restrict p, float *restrict m, const float *restrict g,
                       const float *restrict h, int64_t lo, int64_t hi) {
  const float b1 = h[0], one_minus_b1 = h[1], b2 = h[2], one_minus_b2 = h[3];
  const float wd = h[4], neg_lr = h[5];
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i], mi = m[i];
    const float d = sign(fmaf(one_minus_b1, gi, b1 * mi));  /* sign((1-b1) g + b1 m) */
    p[i] = kind == LION_DECAYED ? fmaf(neg_lr, fmaf(wd, p[i], d), p[i]) : fmaf(neg_lr, d, p[i]);
    m[i] = fmaf(one_minus_b2, gi, b2 * mi);                  /* m = (1-b2) g + b2 m */
  }
}

/* A step split into parts. The calling thread and tasks on XLA's intra-op thread pool claim parts
 * from a counter until none is left; the caller waits only for parts that are running, never for
 * a task still queued (all pool threads may be busy, e.g. running other steps like this one), so
 * it cannot deadlock. A task that starts late finds nothing to do; the last one to finish frees
 * the step. */
typedef struct {
  int kind;
  float *p, *m, *v;
  const float *g;
  float h[16];
  int64_t n, size, parts;
  atomic_long next, finished;
  atomic_int refs;
} Step;

static void work(Step *s) {
  for (;;) {
    int64_t k = atomic_fetch_add_explicit(&s->next, 1, memory_order_relaxed);
    if (k >= s->parts) return;
    int64_t lo = k * s->size, hi = lo + s->size < s->n ? lo + s->size : s->n;
    if (s->kind == ADAM || s->kind == ADAMW)
      adam_range(s->kind, s->p, s->m, s->v, s->g, s->h, lo, hi);
    else
      lion_range(s->kind, s->p, s->m, s->g, s->h, lo, hi);
    atomic_fetch_add_explicit(&s->finished, 1, memory_order_release);
  }
}

static void release(Step *s) {
  if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) free(s);
}

static void task(void *data) {
  work((Step *)data);
  release((Step *)data);
}

enum { MIN_PART = 1 << 18 };  /* elements: 1 MiB per stream */

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

/* Arguments: p, m, [v,] g, h (float32 buffers); results: p, m, [v] (aliasing the arguments). */
static XLA_FFI_Error *call(XLA_FFI_CallFrame *frame, int kind) {
  const XLA_FFI_Api *api = frame->api;
  if (frame->extension_start != NULL &&
      frame->extension_start->type == XLA_FFI_Extension_Metadata) {
    XLA_FFI_Metadata_Extension *ext = (XLA_FFI_Metadata_Extension *)frame->extension_start;
    ext->metadata->api_version.struct_size = XLA_FFI_Api_Version_STRUCT_SIZE;
    ext->metadata->api_version.extension_start = NULL;
    ext->metadata->api_version.major_version = XLA_FFI_API_MAJOR;
    ext->metadata->api_version.minor_version = XLA_FFI_API_MINOR;
    ext->metadata->traits = 0;
    ext->metadata->state_type_id.type_id = 0; /* stateless */
    return NULL;
  }
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;
  const int moments = (kind == ADAM || kind == ADAMW) ? 2 : 1;
  if (frame->args.size != moments + 3 || frame->rets.size != moments + 1)
    return error(api, "gradxform fused step: wrong number of arguments or results");
  XLA_FFI_Buffer *in[5], *out[3];
  for (int i = 0; i < moments + 3; ++i) {
    in[i] = (XLA_FFI_Buffer *)frame->args.args[i];
    if (frame->args.types[i] != XLA_FFI_ArgType_BUFFER || in[i]->dtype != XLA_FFI_DataType_F32)
      return error(api, "gradxform fused step: arguments must be float32 arrays");
  }
  for (int i = 0; i < moments + 1; ++i) {
    out[i] = (XLA_FFI_Buffer *)frame->rets.rets[i];
    if (frame->rets.types[i] != XLA_FFI_RetType_BUFFER || out[i]->data != in[i]->data)
      return error(api, "gradxform fused step: results must alias p and the moments");
  }
  const int64_t n = num_elements(in[0]);
  const int64_t n_h = num_elements(in[moments + 2]);
  if (n_h > 16) return error(api, "gradxform fused step: too many scalars");
  int64_t threads = 0;
  XLA_FFI_ThreadPool_NumThreads_Args nt = {XLA_FFI_ThreadPool_NumThreads_Args_STRUCT_SIZE, NULL,
                                           frame->ctx, &threads};
  if (failed(api, api->XLA_FFI_ThreadPool_NumThreads(&nt))) threads = 0; /* no pool */
  int64_t parts = n / MIN_PART;
  if (parts > 4 * threads) parts = 4 * threads;
  if (parts < 1) parts = 1;

  Step *s = (Step *)malloc(sizeof(Step));
  if (s == NULL) return error(api, "gradxform fused step: out of memory");
  s->kind = kind;
  s->p = (float *)in[0]->data;
  s->m = (float *)in[1]->data;
  s->v = moments == 2 ? (float *)in[2]->data : NULL;
  s->g = (const float *)in[moments + 1]->data;
  memcpy(s->h, in[moments + 2]->data, (size_t)n_h * sizeof(float));
  s->n = n;
  s->parts = parts;
  s->size = ((n + parts - 1) / parts + 15) & ~(int64_t)15; /* whole cache lines per part */
  atomic_init(&s->next, 0);
  atomic_init(&s->finished, 0);
  int64_t helpers = parts > 1 ? (threads - 1 < parts - 1 ? threads - 1 : parts - 1) : 0;
  atomic_init(&s->refs, (int)(1 + helpers));
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

XLA_FFI_Error *gradxform_adam(XLA_FFI_CallFrame *frame) { return call(frame, ADAM); }
XLA_FFI_Error *gradxform_adamw(XLA_FFI_CallFrame *frame) { return call(frame, ADAMW); }
XLA_FFI_Error *gradxform_lion(XLA_FFI_CallFrame *frame) { return call(frame, LION); }
XLA_FFI_Error *gradxform_lion_decayed(XLA_FFI_CallFrame *frame) { return call(frame, LION_DECAYED); }
