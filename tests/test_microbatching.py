"""gradxform.microbatching against optax.microbatching: the same numbers, in the same order."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.microbatching as omb
import pytest

from gradxform import microbatching as gmb

pytestmark = pytest.mark.usefixtures("x64")


def _data():
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(3, 2))), jnp.asarray(rng.normal(size=(12, 3))),
            jnp.asarray(rng.normal(size=(12, 2))))


def _loss(w, x, y):
    return jnp.mean((x @ w - y) ** 2)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-15)


def test_reshape_and_microbatch_match_optax():
    w, x, y = _data()
    _assert_same(gmb.reshape_batch_axis(x, 4), omb.reshape_batch_axis(x, 4))
    _assert_same(gmb.reshape_batch_axis(x, 3, axis=1), omb.reshape_batch_axis(x, 3, axis=1))
    rows = lambda w, x, y: (jnp.sum(x, axis=0), x @ w - y)  # noqa: E731
    for ours, theirs in [
        (gmb.AccumulationType.SUM, omb.AccumulationType.SUM),
        (gmb.AccumulationType.MEAN, omb.AccumulationType.MEAN),
        (gmb.AccumulationType.RUNNING_MEAN, omb.AccumulationType.RUNNING_MEAN),
    ]:
        a = jax.jit(gmb.microbatch(_loss, (1, 2), 4, ours))(w, x, y)
        b = jax.jit(omb.microbatch(_loss, (1, 2), 4, theirs))(w, x, y)
        _assert_same(a, b)
    a = gmb.microbatch(rows, (1,), 3, (gmb.AccumulationType.SUM, gmb.AccumulationType.CONCAT),
                       argnames="y")(w, x, y=y)
    b = omb.microbatch(rows, (1,), 3, (omb.AccumulationType.SUM, omb.AccumulationType.CONCAT),
                       argnames="y")(w, x, y=y)
    _assert_same(a, b)
    np.testing.assert_allclose(a[1], x @ w - y, rtol=1e-13)   # the batch's order, restored
    assert gmb.microbatch(_loss, 1, None) is _loss
    with pytest.raises(ValueError, match="must be divisible by microbatch_size=5"):
        gmb.microbatch(_loss, (1, 2), 5)(w, x, y)


def test_micro_vmap_and_micro_grad_match_optax():
    w, x, y = _data()
    per_row = lambda w, x, y: jnp.sum((x @ w - y) ** 2)  # noqa: E731
    a = gmb.micro_vmap(per_row, in_axes=(None, 0, 0), microbatch_size=4)(w, x, y)
    b = omb.micro_vmap(per_row, in_axes=(None, 0, 0), microbatch_size=4)(w, x, y)
    _assert_same(a, b)
    np.testing.assert_allclose(a, jax.vmap(per_row, (None, 0, 0))(w, x, y), rtol=1e-13)

    def clip(g):
        return jax.tree.map(lambda t: t / jnp.maximum(1.0, optax.global_norm(g)), g)

    kwargs = dict(batch_argnums=(1, 2), microbatch_size=3, transform_fn=clip,
                  metrics_fn=optax.global_norm)
    ga, aux_a = jax.jit(gmb.micro_grad(_loss, **kwargs))(w, x, y)
    gb, aux_b = jax.jit(omb.micro_grad(_loss, **kwargs))(w, x, y)
    _assert_same((ga, tuple(aux_a)), (gb, tuple(aux_b)))
    assert aux_a.values.shape == (12,) and float(jnp.max(aux_a.metrics)) > 1.0
