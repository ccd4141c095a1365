/* One-pass optimizer steps for XLA:CPU, called through the XLA FFI C API.
 *
 * XLA:CPU has no multi-output loop fusion, so a jitted Adam step is three passes over memory
 * (m, then v, then the params read the new m and v back): 40 bytes per float32 parameter instead
 * of the 28 that reading p, g, m, v and writing p, m, v takes. These kernels do the whole step in
 * one pass, in place (the outputs alias the inputs), for many leaves of a tree in one call.
 *
 * Each line is the transformation's equation with the rounding that XLA:CPU gives it: XLA
 * contracts a product feeding an addition into one fused multiply-add (fmaf), the left product
 * when both operands are products. gradxform/_fused.py checks on first use that a kernel gives
 * bit for bit what the XLA program gives, and does not use it otherwise.
 *
 * Arguments: p[L], m[L], (v[L],) g[L], h, for the L leaves of a tree; results: p[L], m[L],
 * (v[L]), aliasing the arguments. Scalars come in one float32 buffer h, computed by the XLA
 * program (see _fused.py). s scales the gradients: clip_by_global_norm's factor, and then
 * `scaled` is 1, or 1 and `scaled` is 0. With the gradient a product g·s, XLA contracts some sums
 * the other way round, and the kernels follow it. Unscaled, g is not multiplied by 1: XLA runs
 * with subnormals flushed to zero, so g·1 would lose subnormal gradients that XLA copies.
 *   Adam, AdamW:   b1, 1-b1, b2, 1-b2, eps, eps_root, weight decay, -lr, 1/(1-b1^t), 1/(1-b2^t),
 *                  s, scaled
 *   Lion:          b1, 1-b1, b2, 1-b2, weight decay, -lr, s, scaled
 *   SGD momentum:  mu, 1-dampening, weight decay, -lr, first step (1 or 0), s, scaled
 * The *_BF16 kinds of Adam keep m in bfloat16 (mu_dtype=bfloat16), the *_BF16_MV kinds m and v
 * (nu_dtype=bfloat16 too): a bfloat16 moment is widened to float32, updated and used in
 * float32, and rounded to nearest even once when stored, as the transformation does.
 */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xla/ffi/api/c_api.h"

enum { ADAM, ADAMW, LION, LION_DECAYED, SGD, SGD_DECAYED, ADAM_BF16, ADAMW_BF16, ADAM_BF16_MV,
       ADAMW_BF16_MV };

static inline float from_bf16(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

static inline uint16_t to_bf16(float x) { /* round to nearest even; NaNs stay (quiet) NaNs */
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

typedef struct {
  float b1, one_minus_b1, b2, one_minus_b2, eps, eps_root, wd, neg_lr, r1, r2, s;
  int scaled, decayed;
} Adam;

static Adam adam_scalars(int kind, const float *h) {
  const Adam a = {h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9], h[10],
                  h[11] != 0.0f, kind == ADAMW || kind == ADAMW_BF16 || kind == ADAMW_BF16_MV};
  return a;
}

/* One element of Adam's step: p, m and v updated in place (m and v as float32 values). */
static inline void adam_element(const Adam *a, float *p, float *m, float *v, float g) {
  const float gi = a->scaled ? g * a->s : g;
  const float mi = fmaf(a->one_minus_b1, gi, a->b1 * *m);                /* m = (1-b1) g + b1 m */
  const float vi = a->scaled ? fmaf(a->b2, *v, a->one_minus_b2 * (gi * gi))
                             : fmaf(a->one_minus_b2, gi * gi, a->b2 * *v); /* v = (1-b2) g² + b2 v */
  const float d = (mi * a->r1) / (sqrtf(fmaf(vi, a->r2, a->eps_root)) + a->eps); /* m̂/(√v̂ + ε) */
  *p = a->decayed ? fmaf(a->neg_lr, fmaf(a->wd, *p, d), *p)            /* p - lr (d + λ p) */
                  : fmaf(a->neg_lr, d, *p);                           /* p - lr d */
  *m = mi;
  *v = vi;
}

static void adam(int kind, float *restrict p, float *restrict m, float *restrict v,
                 const float *restrict g, const float *restrict h, int64_t n) {
  const Adam a = adam_scalars(kind, h);
  for (int64_t i = 0; i < n; ++i) adam_element(&a, &p[i], &m[i], &v[i], g[i]);
}

static void adam_bf16(int kind, float *restrict p, uint16_t *restrict m, float *restrict v,
                      const float *restrict g, const float *restrict h, int64_t n) {
  const Adam a = adam_scalars(kind, h);
  for (int64_t i = 0; i < n; ++i) {
    float mi = from_bf16(m[i]);
    adam_element(&a, &p[i], &mi, &v[i], g[i]);
    m[i] = to_bf16(mi);
  }
}

static void adam_bf16_mv(int kind, float *restrict p, uint16_t *restrict m, uint16_t *restrict v,
                         const float *restrict g, const float *restrict h, int64_t n) {
  const Adam a = adam_scalars(kind, h);
  for (int64_t i = 0; i < n; ++i) {
    float mi = from_bf16(m[i]), vi = from_bf16(v[i]);
    adam_element(&a, &p[i], &mi, &vi, g[i]);
    m[i] = to_bf16(mi);
    v[i] = to_bf16(vi);
  }
}

static inline float sign(float x) { return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x; }

static void lion(int kind, float *restrict p, float *restrict m, const float *restrict g,
                 const float *restrict h, int64_t n) {
  const float b1 = h[0], one_minus_b1 = h[1], b2 = h[2], one_minus_b2 = h[3];
  const float wd = h[4], neg_lr = h[5], s = h[6];
  const int scaled = h[7] != 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = scaled ? g[i] * s : g[i], mi = m[i];
    const float d = sign(fmaf(one_minus_b1, gi, b1 * mi));  /* sign((1-b1) g + b1 m) */
    p[i] = kind == LION_DECAYED ? fmaf(neg_lr, fmaf(wd, p[i], d), p[i]) : fmaf(neg_lr, d, p[i]);
    m[i] = fmaf(one_minus_b2, gi, b2 * mi);                  /* m = (1-b2) g + b2 m */
  }
}

static void sgd(int kind, float *restrict p, float *restrict m, const float *restrict g,
                const float *restrict h, int64_t n) {
  const float mu = h[0], one_minus_d = h[1], wd = h[2], neg_lr = h[3], s = h[5];
  const int first = h[4] != 0.0f, scaled = h[6] != 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = kind != SGD_DECAYED ? (scaled ? g[i] * s : g[i])     /* g + λ p */
                     : scaled ? fmaf(g[i], s, wd * p[i]) : fmaf(wd, p[i], g[i]);
    const float vi = first ? gi : fmaf(mu, m[i], one_minus_d * gi);      /* v = μ v + (1-d) g */
    p[i] = fmaf(neg_lr, vi, p[i]);                                       /* p - lr v */
    m[i] = vi;
  }
}

/* A step over all leaves, split into parts of about equal size. The calling thread and tasks on
 * XLA's intra-op thread pool claim parts from a counter until none is left. The caller waits only
 * for parts that are running, never for a task still queued (all pool threads may be busy, e.g.
 * with other steps like this one), so it cannot deadlock. A task that starts late finds nothing
 * to do; the last one to finish frees the step. */
typedef struct {
  int kind;
  int64_t leaves, parts, part_size;
  float **p, **m, **v;
  const float **g;
  int64_t *start; /* start[l]: index of leaf l's first element in the concatenation */
  float h[16];
  atomic_long next, finished;
  atomic_int refs;
} Step;

static void run(const Step *s, int64_t l, int64_t lo, int64_t hi) {
  const int64_t n = hi - lo;
  float *p = s->p[l] + lo;
  const float *g = s->g[l] + lo;
  void *m = s->m[l], *v = s->v[l]; /* float32, or bfloat16 for the _BF16 kinds */
  if (s->kind == ADAM_BF16_MV || s->kind == ADAMW_BF16_MV)
    adam_bf16_mv(s->kind, p, (uint16_t *)m + lo, (uint16_t *)v + lo, g, s->h, n);
  else if (s->kind == ADAM_BF16 || s->kind == ADAMW_BF16)
    adam_bf16(s->kind, p, (uint16_t *)m + lo, (float *)v + lo, g, s->h, n);
  else if (s->kind == ADAM || s->kind == ADAMW)
    adam(s->kind, p, (float *)m + lo, (float *)v + lo, g, s->h, n);
  else if (s->kind == LION || s->kind == LION_DECAYED)
    lion(s->kind, p, (float *)m + lo, g, s->h, n);
  else
    sgd(s->kind, p, (float *)m + lo, g, s->h, n);
}

static void work(Step *s) {
  const int64_t total = s->start[s->leaves];
  for (;;) {
    const int64_t k = atomic_fetch_add_explicit(&s->next, 1, memory_order_relaxed);
    if (k >= s->parts) return;
    const int64_t a = k * s->part_size, b = a + s->part_size < total ? a + s->part_size : total;
    int64_t lo = 0, hi = s->leaves; /* the last leaf starting at or before a */
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      if (s->start[mid] <= a) lo = mid; else hi = mid;
    }
    for (int64_t l = lo; l < s->leaves && s->start[l] < b; ++l) {
      const int64_t from = a > s->start[l] ? a - s->start[l] : 0;
      const int64_t to = (b < s->start[l + 1] ? b : s->start[l + 1]) - s->start[l];
      if (to > from) run(s, l, from, to);
    }
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

enum { MIN_PART = 1 << 16 }; /* elements: below this, a thread costs more than it brings */

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

static XLA_FFI_Error *call(XLA_FFI_CallFrame *frame, int kind) {
  const XLA_FFI_Api *api = frame->api;
  if (frame->extension_start != NULL &&
      frame->extension_start->type == XLA_FFI_Extension_Metadata)
    return metadata(frame);
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return NULL;

  const int bf16_v = kind == ADAM_BF16_MV || kind == ADAMW_BF16_MV;
  const int bf16_m = bf16_v || kind == ADAM_BF16 || kind == ADAMW_BF16;
  const int64_t moments = (kind == ADAM || kind == ADAMW || bf16_m) ? 2 : 1;
  const int64_t leaves = (frame->args.size - 1) / (moments + 2);
  if (leaves < 1 || frame->args.size != leaves * (moments + 2) + 1 ||
      frame->rets.size != leaves * (moments + 1))
    return error(api, "gradxform fused step: wrong number of arguments or results");
  for (int64_t i = 0; i < frame->args.size; ++i) {
    const XLA_FFI_Buffer *b = (const XLA_FFI_Buffer *)frame->args.args[i];
    const int bf16 = (bf16_m && i >= leaves && i < 2 * leaves) ||      /* m */
                     (bf16_v && i >= 2 * leaves && i < 3 * leaves); /* v */
    const XLA_FFI_DataType want = bf16 ? XLA_FFI_DataType_BF16 : XLA_FFI_DataType_F32;
    if (frame->args.types[i] != XLA_FFI_ArgType_BUFFER || b->dtype != want)
      return error(api, "gradxform fused step: arguments must be float32 arrays "
                        "(m bfloat16 for the _bf16 kinds)");
  }
  for (int64_t i = 0; i < frame->rets.size; ++i) {
    const XLA_FFI_Buffer *b = (const XLA_FFI_Buffer *)frame->rets.rets[i];
    if (frame->rets.types[i] != XLA_FFI_RetType_BUFFER ||
        b->data != ((const XLA_FFI_Buffer *)frame->args.args[i])->data)
      return error(api, "gradxform fused step: results must alias p and the moments");
  }
  const XLA_FFI_Buffer *h = (const XLA_FFI_Buffer *)frame->args.args[frame->args.size - 1];
  if (num_elements(h) > 16) return error(api, "gradxform fused step: too many scalars");

  /* One allocation: the step, then its per-leaf pointers and offsets. */
  const size_t per_leaf = 4 * sizeof(float *) + sizeof(int64_t);
  Step *s = (Step *)malloc(sizeof(Step) + (size_t)leaves * per_leaf + sizeof(int64_t));
  if (s == NULL) return error(api, "gradxform fused step: out of memory");
  s->kind = kind;
  s->leaves = leaves;
  s->p = (float **)(s + 1);
  s->m = s->p + leaves;
  s->v = s->m + leaves;
  s->g = (const float **)(s->v + leaves);
  s->start = (int64_t *)(s->g + leaves);
  s->start[0] = 0;
  for (int64_t l = 0; l < leaves; ++l) {
    void **args = frame->args.args;
    s->p[l] = (float *)((XLA_FFI_Buffer *)args[l])->data;
    s->m[l] = (float *)((XLA_FFI_Buffer *)args[leaves + l])->data;
    s->v[l] = moments == 2 ? (float *)((XLA_FFI_Buffer *)args[2 * leaves + l])->data : NULL;
    s->g[l] = (const float *)((XLA_FFI_Buffer *)args[moments * leaves + leaves + l])->data;
    s->start[l + 1] = s->start[l] + num_elements((XLA_FFI_Buffer *)args[l]);
  }
  memcpy(s->h, h->data, (size_t)num_elements(h) * sizeof(float));

  int64_t threads = 0;
  XLA_FFI_ThreadPool_NumThreads_Args nt = {XLA_FFI_ThreadPool_NumThreads_Args_STRUCT_SIZE, NULL,
                                           frame->ctx, &threads};
  if (failed(api, api->XLA_FFI_ThreadPool_NumThreads(&nt))) threads = 0; /* no pool */
  const int64_t total = s->start[leaves];
  int64_t parts = total / MIN_PART;
  if (parts > 4 * threads) parts = 4 * threads; /* a few parts per thread evens out stragglers */
  if (parts < 1) parts = 1;
  s->parts = parts;
  s->part_size = ((total + parts - 1) / parts + 15) & ~(int64_t)15; /* whole cache lines */
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

XLA_FFI_Error *gradxform_adam(XLA_FFI_CallFrame *f) { return call(f, ADAM); }
XLA_FFI_Error *gradxform_adamw(XLA_FFI_CallFrame *f) { return call(f, ADAMW); }
XLA_FFI_Error *gradxform_lion(XLA_FFI_CallFrame *f) { return call(f, LION); }
XLA_FFI_Error *gradxform_lion_decayed(XLA_FFI_CallFrame *f) { return call(f, LION_DECAYED); }
XLA_FFI_Error *gradxform_sgd(XLA_FFI_CallFrame *f) { return call(f, SGD); }
XLA_FFI_Error *gradxform_sgd_decayed(XLA_FFI_CallFrame *f) { return call(f, SGD_DECAYED); }
XLA_FFI_Error *gradxform_adam_bf16(XLA_FFI_CallFrame *f) { return call(f, ADAM_BF16); }
XLA_FFI_Error *gradxform_adamw_bf16(XLA_FFI_CallFrame *f) { return call(f, ADAMW_BF16); }
XLA_FFI_Error *gradxform_adam_bf16_mv(XLA_FFI_CallFrame *f) { return call(f, ADAM_BF16_MV); }
XLA_FFI_Error *gradxform_adamw_bf16_mv(XLA_FFI_CallFrame *f) { return call(f, ADAMW_BF16_MV); }
