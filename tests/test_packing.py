"""gradxform.flatten: packed trees and the flatten wrapper give the numbers of the unpacked tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradxform as gx
from gradxform._src.fast.packing import PackedTree, flatten, pack, unpack
from gradxform._src.fast.step import make_step, update_and_apply
from gradxform.testing import check_transformation

# Elementwise optimizers: every coordinate is computed by the same expression packed or not.
ELEMENTWISE = {
    "sgd_momentum": lambda: gx.sgd(1e-2, 0.9),
    "nesterov": lambda: gx.sgd(1e-2, 0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: gx.adam(1e-2),
    "adamw": lambda: gx.adamw(1e-2, weight_decay=1e-2),
    "lion": lambda: gx.lion(1e-3, weight_decay=1e-2),
}


def _tree(dtype=jnp.float32, n_layers=3):
    # numpy draws: jax.random would compile one program per distinct leaf shape
    rng = np.random.default_rng(1)
    tree = {f"layer{i}": {"w": jnp.asarray(rng.normal(size=(7 + i, 5)), dtype),
                          "b": jnp.asarray(rng.normal(size=(5,)), dtype)}
            for i in range(n_layers)}
    tree["scalar"] = jnp.asarray(rng.normal(), dtype)
    return tree


def _grads(tree, step):
    rng = np.random.default_rng(step)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape) * (1 + step), p.dtype), tree
    )


def _identical(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_pack_then_unpack_gives_the_tree_back():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": None, "c": jnp.zeros((0, 4)),
            "d": (jnp.float32(3.0), jnp.ones(3, jnp.bfloat16)), "e": jnp.arange(4.0)}
    packed = pack(tree)
    assert isinstance(packed, PackedTree)
    assert packed.num_leaves == 5
    # one buffer per dtype, in order of first appearance; no promotion
    assert [b.dtype for b in packed.buffers] == [jnp.float32, jnp.bfloat16]
    assert [b.shape for b in packed.buffers] == [(6 + 0 + 1 + 4,), (3,)]
    back = packed.unpack()
    assert _identical(back, tree)
    assert back["b"] is None
    assert unpack(packed) is not packed and unpack(tree) is tree
    assert pack(packed) is packed
    assert repr(packed) == "PackedTree(5 leaves in float32[11], bfloat16[3])"


def test_a_packed_tree_is_a_pytree_of_its_buffers():
    packed = pack(_tree())
    assert len(jax.tree.leaves(packed)) == 1
    doubled = jax.jit(lambda p: jax.tree.map(lambda x: 2 * x, p))(packed)
    assert isinstance(doubled, PackedTree) and doubled.layout == packed.layout
    assert _identical(doubled.unpack(), jax.tree.map(lambda x: 2 * x, _tree()))


def test_gradients_with_respect_to_a_packed_tree_are_packed_gradients():
    tree = _tree()

    def loss(t):
        return sum(jnp.sum(jnp.sin(x) * (i + 1)) for i, x in enumerate(jax.tree.leaves(t)))

    g_packed = jax.grad(lambda p: loss(p.unpack()))(pack(tree))
    assert isinstance(g_packed, PackedTree)
    assert _identical(g_packed.unpack(), jax.grad(loss)(tree))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_packed_params_give_exactly_the_unpacked_numbers(name, fused):
    opt = ELEMENTWISE[name]()
    step = make_step(opt, donate=False, fused=fused)
    tree = _tree()
    packed = pack(tree)
    s_tree, s_packed = opt.init(tree), opt.init(packed)
    for i in range(5):
        tree, s_tree = step(_grads(tree, i), s_tree, tree)
        packed, s_packed = step(pack(_grads(tree, i)), s_packed, packed)
        assert _identical(packed.unpack(), tree), f"params differ at step {i}"


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_flatten_gives_exactly_the_unpacked_numbers(name):
    opt = ELEMENTWISE[name]()
    wrapped = flatten(opt)
    # the XLA programs (flatten(opt) has no kernel, so compare it with opt's XLA program)
    step, wrapped_step = make_step(opt, donate=False, fused=False), make_step(wrapped, donate=False)
    p1 = p2 = _tree()
    s1, s2 = opt.init(p1), wrapped.init(p2)
    for i in range(5):
        p1, s1 = step(_grads(p1, i), s1, p1)
        p2, s2 = wrapped_step(_grads(p2, i), s2, p2)
        assert _identical(p1, p2), f"params differ at step {i}"


@pytest.mark.parametrize("eps_in_sqrt", [True, False])
def test_rms_scaled_optimizers_agree_to_rounding_packed(eps_in_sqrt):
    # g · 1/√(s + ε) is not bitwise stable under XLA:CPU: rsqrt is an approximation in
    # vectorized loops and exact on scalars, and g · (1/d) is rewritten to g / d or not
    # depending on the fusion, so a coordinate can differ in the last bit once packed.
    opt = gx.rmsprop(1e-2, momentum=0.9, eps_in_sqrt=eps_in_sqrt)
    step = make_step(opt, donate=False)
    tree = _tree()
    packed = pack(tree)
    s_tree, s_packed = opt.init(tree), opt.init(packed)
    for i in range(5):
        tree, s_tree = step(_grads(tree, i), s_tree, tree)
        packed, s_packed = step(pack(_grads(tree, i)), s_packed, packed)
    for x, y in zip(jax.tree.leaves(packed.unpack()), jax.tree.leaves(tree)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_flatten_keeps_16_bit_leaves_in_their_own_buffer():
    tree = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
    state = flatten(gx.adam(1e-2)).init(tree)
    mu = state[0].mu
    assert isinstance(mu, PackedTree)
    # float32 moments for the bf16 leaf (as unpacked), in the buffer that mirrors its own
    assert [b.dtype for b in mu.buffers] == [jnp.float32, jnp.float32]
    assert [b.shape for b in mu.buffers] == [(3,), (12,)]  # keys in sorted order: b, w
    updates, _ = flatten(gx.adam(1e-2)).update(_grads(tree, 0), state, tree)
    assert updates["w"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32


def test_flatten_with_global_norm_clipping_agrees_to_rounding():
    # The global norm sums the same squares in another order: equal to rounding, not bitwise.
    opt = gx.chain(gx.clip_by_global_norm(0.5), gx.adam(1e-2))
    p1 = p2 = _tree()
    s1, s2 = opt.init(p1), flatten(opt).init(p2)
    for i in range(5):
        p1, s1 = make_step(opt, donate=False)(_grads(p1, i), s1, p1)
        p2, s2 = make_step(flatten(opt), donate=False)(_grads(p2, i), s2, p2)
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_flatten_state_has_a_few_leaves_whatever_the_number_of_leaves():
    many = _tree(n_layers=200)
    assert len(jax.tree.leaves(many)) == 401
    state = flatten(gx.adamw(1e-3)).init(many)
    # counts of the three transformations, and one buffer each for m and v
    assert len(jax.tree.leaves(state)) == 5


def test_flatten_on_packed_params_adds_no_copies():
    opt = gx.adam(1e-3)
    packed = pack(_tree(n_layers=50))
    state = flatten(opt).init(packed)
    jaxpr = jax.make_jaxpr(lambda g, s, p: flatten(opt).update(g, s, p))(packed, state, packed)
    prims = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    assert "concatenate" not in prims and "slice" not in prims


def test_packed_step_compiles_to_the_same_program_for_any_number_of_leaves():
    # The per-leaf cost that packing removes, seen in the optimized HLO: the number of
    # fusions (passes over memory) does not grow with the number of leaves.
    def fusions(n_layers):
        opt = gx.adamw(1e-3)
        packed = pack(_tree(n_layers=n_layers))
        step = jax.jit(lambda g, s, p: update_and_apply(opt, g, s, p))
        hlo = step.lower(packed, opt.init(packed), packed).compile().as_text()
        return hlo.count(" fusion(")

    assert fusions(3) == fusions(300)


def test_flatten_passes_the_conformance_check():
    check_transformation(flatten(gx.adamw(1e-2)))


def test_flatten_matches_optax_flatten():
    tree = _tree()
    ours, theirs = flatten(gx.adam(1e-2)), optax.flatten(optax.adam(1e-2))
    s1, s2 = ours.init(tree), theirs.init(tree)
    for i in range(3):
        u1, s1 = ours.update(_grads(tree, i), s1, tree)
        u2, s2 = theirs.update(_grads(tree, i), s2, tree)
        for x, y in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8)


def test_flatten_refuses_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="flatten: inner must be a transformation"):
        flatten(lambda g: g)
