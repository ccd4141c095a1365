"""The vector kernel (gradxform/_src/fast/vector_kernel.c) against numpy and against XLA.

make_step runs each run of elementwise transformations of a chain through the kernel: one
register program per run, from the transformations' own per-element equations. Here its results
are compared with numpy float32 re-derivations of each equation (the kernel rounds once per
operation, as numpy does), with the XLA program (which may contract a product and a sum into a
fused multiply-add: a few units in the last place apart), on random inputs with zeros, negative,
tiny and large values, float32 and bfloat16 moments, and leaves whose sizes are not multiples of
the kernel's chunk. A chain of transformations written here, which the library has never seen,
is fused the same way.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import gradxform as gx
from gradxform._src.fast import fusion, kernel, program
from gradxform._src.fast.step import make_step

needs_kernel = pytest.mark.skipif(
    not kernel.available(), reason=f"the vector kernel does not run here: {kernel.status()}"
)

SIZES = (1 << 14, (1 << 14) + 7, 70_001)  # chunks are 64-512 elements: 16391 and 70001 end partway


# -- a chain the library has never seen -----------------------------------------------------------


class SoftSignState(NamedTuple):
    count: Any
    mu: Any


@gx.pytree_dataclass
class scale_by_soft_sign(gx.ElementwiseTransformation):
    """u = clip(m̂ / √(1 + g²), ±k) where |m̂| > τ, else m̂ / τ; m an EMA of g (a test equation
    that reads like no optimizer of the library: select, comparisons, abs, max/min, rsqrt,
    integer powers)."""

    b: float = gx.hyperparameter(0.8)
    k: float = gx.hyperparameter(2.0)
    tau: float = gx.hyperparameter(1e-3)

    state_type = SoftSignState

    def init_buffers(self, params):
        return (jax.tree.map(jnp.zeros_like, params),)

    def step_scalars(self, h, t):
        return dict(b=h.b, k=h.k, tau=h.tau, c=1 / (1 - h.b ** t.astype(jnp.float32)))

    def element(self, s, g, m):
        m = s.b * m + (1 - s.b) * g
        m_hat = m * s.c
        r = m_hat * jax.lax.rsqrt(1 + g ** 2)
        r = jnp.where(jnp.abs(m_hat) > s.tau, r, m_hat / s.tau)
        return jnp.maximum(jnp.minimum(r, s.k), -s.k) + 1e-3 * g ** 3, (m,)


@gx.pytree_dataclass
class descend(gx.ElementwiseTransformation):
    """u = -η u (a learning rate written as an elementwise transformation)."""

    eta: float = gx.hyperparameter(1e-2)

    class state_type(NamedTuple):
        pass

    def element(self, s, g):
        return -s.eta * g, ()


def _np_soft_sign(p, g, m, t, b=0.8, k=2.0, tau=1e-3, eta=1e-2):
    f = np.float32
    b, k, tau, eta = f(b), f(k), f(tau), f(eta)
    m = b * m + (f(1) - b) * g
    c = f(1) / (f(1) - b ** f(t))
    m_hat = m * c
    r = m_hat * (f(1) / np.sqrt(f(1) + g * g))
    r = np.where(np.abs(m_hat) > tau, r, m_hat / tau)
    u = np.maximum(np.minimum(r, k), -k) + f(1e-3) * (g * g * g)
    return p + (-eta) * u, (m,)


# -- numpy re-derivations of the presets -----------------------------------------------------------


def _bias(b, t):
    """1 / (1 - β^t) as the library computes it in float32: -expm1(t ln β)."""
    f = np.float32
    return f(1) / -np.expm1(f(t) * np.log(f(b)))


def _np_adam(p, g, m, v, t, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, clip=None):
    f = np.float32
    b1, b2, eps, lr, wd = f(b1), f(b2), f(eps), f(lr), f(wd)
    if clip is not None:
        norm = np.sqrt(np.sum([np.sum(x.astype(np.float64) ** 2) for x in g])).astype(f)
        g = [x * (f(clip) / max(norm, f(clip))) for x in g]
    out = []
    for p_, g_, m_, v_ in zip(p, g, m, v, strict=True):
        m_ = (f(1) - b1) * g_ + b1 * m_.astype(f)
        v_ = (f(1) - b2) * (g_ * g_) + b2 * v_.astype(f)
        u = (m_ * _bias(b1, t)) / (np.sqrt(v_ * _bias(b2, t) + f(0)) + eps)
        if wd:
            u = u + wd * p_
        out.append((p_ + -lr * u, m_, v_))
    return out


def _np_lion(p, g, m, lr=1e-3, b1=0.9, b2=0.99, wd=1e-2):
    f = np.float32
    b1, b2, lr, wd = f(b1), f(b2), f(lr), f(wd)
    out = []
    for p_, g_, m_ in zip(p, g, m, strict=True):
        u = np.sign((f(1) - b1) * g_ + b1 * m_) + wd * p_
        out.append((p_ + -lr * u, (f(1) - b2) * g_ + b2 * m_))
    return out


def _np_sgd(p, g, v, lr=1e-2, mu=0.9):
    f = np.float32
    out = []
    for p_, g_, v_ in zip(p, g, v, strict=True):
        v_ = f(mu) * v_ + (f(1) - f(0)) * g_
        out.append((p_ + -f(lr) * v_, v_))
    return out


# -- inputs ----------------------------------------------------------------------------------------


def _random(rng, n, scale=1.0, positive=False):
    """float32 numbers over many magnitudes, with zeros, tiny and large values at random places."""
    x = rng.standard_normal(n).astype(np.float32) * (10.0 ** rng.integers(-6, 3, n)).astype(
        np.float32) * np.float32(scale)
    x[rng.random(n) < 0.02] = 0.0
    x[rng.random(n) < 0.01] = np.float32(1e3)
    x[rng.random(n) < 0.01] = np.float32(-1e-30)
    return np.abs(x) if positive else x


def _tree(arrays):
    return {f"leaf{i}": a for i, a in enumerate(arrays)}


def _leaves(tree):
    """Copies (a donating step reuses the buffers) of the leaves, in order."""
    return [np.array(tree[f"leaf{i}"]) for i in range(len(tree))]


def _fused_whole(opt) -> None:
    """Fails where a member of the chain is not elementwise: the kernel would run only part of
    it (that member runs through XLA, whose fused multiply-adds round otherwise), and a test of
    the kernel's numbers would test less than it says."""
    members = [t for t, _ in fusion.flat_members(opt, opt.init({"w": jnp.zeros(3)}))]
    assert fusion.runs(members) == [(0, len(members))], (
        f"the kernel runs only part of {opt!r}: not every member is an ElementwiseTransformation")


def _kernel_calls(step, grads, state, params) -> int:
    hlo = jax.jit(step).lower(grads, state, params).as_text()
    return hlo.count(kernel.TARGET)


def _ulp_close(actual, desired, maxulp):
    actual = np.asarray(actual, np.float32)
    desired = np.asarray(desired, np.float32)
    np.testing.assert_array_max_ulp(actual, desired, maxulp=maxulp)


def _close_to_operands(actual, desired, operands, k):
    """|actual - desired| within k ulp of the largest operand, element by element.

    A sum that cancels (θ + u with u ≈ -θ, β m + (1 - β) g with the terms of opposite signs)
    has an error of an ulp of its operands, many ulp of its tiny result: where XLA contracts a
    product and a sum into one fused multiply-add, that is the size of the difference."""
    actual = np.asarray(actual, np.float32)
    desired = np.asarray(desired, np.float32)
    scale = np.max([np.abs(np.asarray(x, np.float32)) for x in operands], axis=0)
    bound = k * np.spacing(np.maximum(scale, np.abs(desired)))
    bad = ~(np.abs(actual - desired) <= bound)
    assert not bad.any(), (f"{bad.sum()} elements differ by more than {k} ulp of their operands, "
                           f"e.g. {actual[bad][:3]} != {desired[bad][:3]}")


# -- the kernel against numpy ----------------------------------------------------------------------


@needs_kernel
@pytest.mark.parametrize("mu_dtype", [None, jnp.bfloat16])
@pytest.mark.parametrize("wd,clip", [(0.0, None), (1e-2, None), (0.0, 0.5), (0.0, 1e9)])
def test_adam_family_matches_numpy(wd, clip, mu_dtype):
    # The moments come out bit for bit: (1-β)g + βm is two products and a sum, each rounded as
    # numpy rounds it. The update u = m̂/(√v̂ + ε) within 8 ulp, and so θ + (-η u) within 8 ulp of
    # its terms: the bias corrections 1/(1 - β^t) come from XLA's float32 log and expm1, which
    # are a few ulp from numpy's. Clipped, the norm is summed in another order, so the moments
    # too are within a few ulp of their terms.
    rng = np.random.default_rng(0)
    opt = gx.adamw(1e-2, weight_decay=wd, mu_dtype=mu_dtype) if wd else \
        gx.adam(1e-2, mu_dtype=mu_dtype)
    if clip is not None:
        opt = gx.chain(gx.clip_by_global_norm(clip), opt)
    _fused_whole(opt)
    at = 1 if clip is not None else 0
    params = _tree([jnp.asarray(_random(rng, n)) for n in SIZES])
    state = opt.init(params)
    step = make_step(opt)  # donating: the kernel runs on donated steps
    assert _kernel_calls(step, params, state, params) >= 1
    for t in (1, 2, 3):
        g = [_random(rng, n) for n in SIZES]
        adam_state = fusion.flat_members(opt, state)[at][1]
        p0, m0, v0 = _leaves(params), _leaves(adam_state.mu), _leaves(adam_state.nu)
        want = _np_adam(p0, g, m0, v0, t, wd=wd, clip=clip)
        params, state = step(_tree([jnp.asarray(x) for x in g]), state, params)
        adam_state = fusion.flat_members(opt, state)[at][1]
        got = zip(_leaves(params), _leaves(adam_state.mu), _leaves(adam_state.nu), strict=True)
        for (got_p, got_m, got_v), (wp, wm, wv), p_, m_, v_, g_ in zip(got, want, p0, m0, v0, g,
                                                                        strict=True):
            if mu_dtype is not None:
                wm = wm.astype(ml_dtypes.bfloat16)
            if clip is None or clip > 1:
                np.testing.assert_array_equal(got_m, wm)
                np.testing.assert_array_equal(got_v, wv)
            else:
                _close_to_operands(got_m, wm, [m_, g_], 4 if mu_dtype is None else 1 << 16)
                _close_to_operands(got_v, wv, [v_, g_ * g_], 4)
            _close_to_operands(got_p, wp, [p_, wp - p_], 8)


@needs_kernel
def test_lion_matches_numpy():
    rng = np.random.default_rng(1)
    opt = gx.lion(1e-3, weight_decay=1e-2)
    _fused_whole(opt)
    params = _tree([jnp.asarray(_random(rng, n)) for n in SIZES])
    state = opt.init(params)
    step = make_step(opt)  # donating: the kernel runs on donated steps
    for _ in range(3):
        g = [_random(rng, n) for n in SIZES]
        m = _leaves(fusion.flat_members(opt, state)[0][1].mu)
        p_prevs = _leaves(params)
        want = _np_lion(p_prevs, g, m)
        params, state = step(_tree([jnp.asarray(x) for x in g]), state, params)
        got_m = _leaves(fusion.flat_members(opt, state)[0][1].mu)
        for got_p, gm, p_prev, (wp, wm) in zip(_leaves(params), got_m, p_prevs, want,
                                               strict=True):
            np.testing.assert_array_equal(gm, wm)
            _close_to_operands(got_p, wp, [p_prev, wp - p_prev], 1)


@needs_kernel
def test_sgd_momentum_matches_numpy():
    rng = np.random.default_rng(2)
    opt = gx.sgd(1e-2, 0.9)
    _fused_whole(opt)
    params = _tree([jnp.asarray(_random(rng, n)) for n in SIZES])
    state = opt.init(params)
    # A state past the first step (trace copies g on the first step).
    params, state = make_step(opt, donate=False)(params, state, params)
    step = make_step(opt)  # donating: the kernel runs on donated steps
    for _ in range(3):
        g = [_random(rng, n) for n in SIZES]
        v = _leaves(fusion.flat_members(opt, state)[0][1].trace)
        p_prevs = _leaves(params)
        want = _np_sgd(p_prevs, g, v)
        params, state = step(_tree([jnp.asarray(x) for x in g]), state, params)
        got_v = _leaves(fusion.flat_members(opt, state)[0][1].trace)
        for got_p, gv, p_prev, (wp, wv) in zip(_leaves(params), got_v, p_prevs, want,
                                               strict=True):
            np.testing.assert_array_equal(gv, wv)
            _close_to_operands(got_p, wp, [p_prev, wp - p_prev], 1)


@needs_kernel
def test_a_chain_the_library_has_never_seen_is_fused_and_matches_numpy():
    rng = np.random.default_rng(3)
    opt = gx.chain(scale_by_soft_sign(), descend(1e-2))
    params = _tree([jnp.asarray(_random(rng, n)) for n in SIZES])
    state = opt.init(params)
    step = make_step(opt)  # donating: the kernel runs on donated steps
    assert _kernel_calls(step, params, state, params) == 1  # 3 leaves, one run, one call
    for t in (1, 2, 3):
        g = [_random(rng, n) for n in SIZES]
        m = _leaves(state[0].mu)
        p_prevs = _leaves(params)
        want = [_np_soft_sign(p_, g_, m_, t) for p_, g_, m_ in zip(p_prevs, g, m)]
        params, state = step(_tree([jnp.asarray(x) for x in g]), state, params)
        for got_p, got_m, p_prev, (wp, (wm,)) in zip(_leaves(params), _leaves(state[0].mu),
                                                     p_prevs, want, strict=True):
            np.testing.assert_array_equal(got_m, wm)
            # c = 1/(1 - b^t) is computed by XLA's pow, and numpy's may round differently.
            _close_to_operands(got_p, wp, [p_prev, wp - p_prev], 8)


# -- the kernel against the XLA program ----------------------------------------------------------

CHAINS = {
    "adam": lambda: gx.adam(1e-2, b1=0.8, eps=1e-6),
    "adamw_schedule": lambda: gx.adamw(gx.cosine_decay_schedule(1e-2, 10), weight_decay=1e-2),
    "adamw_bf16_mu_nu": lambda: gx.chain(
        gx.scale_by_adam(mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16),
        gx.add_decayed_weights(1e-2), gx.scale_by_learning_rate(1e-2)),
    "lion": lambda: gx.lion(1e-3, weight_decay=1e-2),
    "sgd_momentum": lambda: gx.sgd(1e-2, 0.9, weight_decay=1e-3),
    "adam_clip": lambda: gx.chain(gx.clip_by_global_norm(0.5), gx.adam(1e-2)),
    "unseen": lambda: gx.chain(scale_by_soft_sign(), descend(1e-2)),
}


@needs_kernel
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_kernel_agrees_with_the_xla_program(name):
    opt = CHAINS[name]()
    _fused_whole(opt)
    rng = np.random.default_rng(4)
    sizes = SIZES + (10,)  # a leaf below the kernel's threshold runs through XLA
    params = _tree([jnp.asarray(_random(rng, n)) for n in sizes])
    fused, plain = make_step(opt), make_step(opt, donate=False, fused=False)
    p, s = params, opt.init(params)
    for _ in range(4):  # each step from the same inputs, so that differences do not compound
        g = _tree([jnp.asarray(_random(rng, n, scale=1e-2)) for n in sizes])
        p2, s2 = plain(g, s, p)
        p1, s1 = fused(g, *jax.tree.map(jnp.copy, (s, p)))
        for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            if a.dtype == jnp.int32:
                np.testing.assert_array_equal(a, b)
                continue
            # Within 2 ulp of the leaf's largest value: where XLA contracts a product and a
            # sum into a fused multiply-add, a sum that cancels (β m + (1 - β) g with terms of
            # opposite signs, θ - η u) differs by an ulp of its terms, not of its result.
            bits = 16 if a.dtype == jnp.bfloat16 else 0  # bfloat16 keeps 16 fewer bits
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            ulp = np.spacing(np.max(np.abs(b))) * 2.0 ** bits
            assert np.max(np.abs(a - b)) <= 2 * ulp
        p, s = p1, s1


# -- what the kernel takes, and where it stands aside -------------------------------------------


@gx.pytree_dataclass
class centre_each_leaf(gx.Transformation):
    """u = g - mean(g) over each leaf: reads the whole leaf, so it is not elementwise."""

    def init(self, params):
        return gx.EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(lambda g: g - jnp.mean(g), updates), state


def test_runs_are_cut_by_transformations_that_are_not_elementwise():
    members = [gx.clip_by_global_norm(1.0), gx.scale_by_adam(), descend(),
               centre_each_leaf(), descend(), gx.clip_by_global_norm(1.0)]
    assert fusion.runs(members) == [(0, 3), (4, 5)]  # a trailing clip leads nothing


@needs_kernel
def test_only_the_run_that_ends_the_chain_runs_through_the_kernel():
    opt = gx.chain(scale_by_soft_sign(), centre_each_leaf(), scale_by_soft_sign(), descend())
    params = {"w": jnp.linspace(-1, 1, 1 << 15)}
    step = make_step(opt)
    assert _kernel_calls(step, params, opt.init(params), params) == 1
    new_params, _ = step(params, opt.init(params), jax.tree.map(jnp.copy, params))

    @jax.jit
    def reference(opt, g, s, p):
        u, s = opt.update(g, s, p)
        return gx.apply_updates(p, u)

    want = reference(opt, params, opt.init(params), params)
    assert np.max(np.abs(new_params["w"] - want["w"])) <= 2 * np.spacing(np.max(np.abs(want["w"])))


def test_the_program_of_an_unsupported_operation_says_why():
    with pytest.raises(program.Unsupported, match="cumsum|on arrays"):
        program.build(lambda s, x: (jnp.cumsum(x[None])[0],), [], [jnp.float32])
    with pytest.raises(program.Unsupported, match="erf"):
        program.build(lambda s, x: (jax.lax.erf(x),), [], [jnp.float32])
    with pytest.raises(program.Unsupported, match="float16"):
        program.build(lambda s, x: (x,), [], [jnp.float16])


def test_integer_powers_are_expanded_as_xla_expands_them():
    prog = program.build(lambda s, x: (x ** 5, x ** -2), [], [jnp.float32])
    ops = [program.OPS[c] for c in prog.code[-5 * prog.instructions::5]]
    # x^5 = x * (x²)²: three products; x^-2 = 1 / (x x)
    assert ops.count("mul") == 4 and ops.count("div") == 1


@needs_kernel
def test_leaves_of_other_dtypes_and_small_leaves_run_through_xla_bit_for_bit():
    opt = gx.adamw(1e-2)
    params = {"half": jnp.linspace(-1, 1, 1 << 15).astype(jnp.bfloat16),
              "small": jnp.linspace(-1, 1, 100)}
    grads = jax.tree.map(lambda x: (x * 0.5).astype(x.dtype), params)
    step = make_step(opt)  # donating: the kernel runs on donated steps
    assert _kernel_calls(step, grads, opt.init(params), params) == 0
    p1, s1 = step(grads, opt.init(params), jax.tree.map(jnp.copy, params))

    @jax.jit
    def reference(opt, g, s, p):
        u, s = opt.update(g, s, p)
        return gx.apply_updates(p, u), s

    p2, s2 = reference(opt, grads, opt.init(params), params)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


@needs_kernel
def test_donated_kernel_step_updates_in_place_without_copies():
    opt = gx.chain(scale_by_soft_sign(), descend(1e-2))
    params = {"w": jnp.ones((256, 300)), "b": jnp.ones((1 << 15,))}
    from gradxform._src.fast import step as step_module

    leaves, treedef = jax.tree.flatten(opt)
    hlo = step_module._compiled(treedef, True, True).lower(
        leaves, params, opt.init(params), params, {}).compile().as_text()
    assert kernel.TARGET in hlo
    assert not re.findall(r"= \w+\[\d[^\]]*\]\S* copy\(", hlo)


# -- the C source ------------------------------------------------------------------------------

SOURCE = Path(gx.__file__).parent / "_src" / "fast" / "vector_kernel.c"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to report vectorization")
def test_every_operation_loop_vectorizes():
    # Compiled as setup.py compiles it (without the run-time clones, so each loop is reported
    # once). exp and log are the exceptions: without -ffast-math the C library's expf and logf
    # have no vector versions.
    import sysconfig

    cmd = ["gcc", "-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=off",
           "-DGRADXFORM_NO_CLONES", "-fopt-info-vec-all", "-c", "-o", "/dev/null",
           f"-I{sysconfig.get_paths()['include']}", f"-I{SOURCE.parent / 'include'}",
           str(SOURCE)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    lines = SOURCE.read_text().splitlines()
    op_loops = [i + 1 for i, line in enumerate(lines)
                if "for (int i = 0; i < n; ++i)" in line and "expf" not in line
                and "logf" not in line]
    assert len(op_loops) >= len(program.OPS) - 2
    vectorized = {int(m) for m in re.findall(r"vector_kernel\.c:(\d+):\d+: optimized: loop "
                                             r"vectorized", out)}
    assert not set(op_loops) - vectorized, [lines[i - 1] for i in set(op_loops) - vectorized]
