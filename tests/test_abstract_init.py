"""Every public transformation initialises from abstract params: `jax.eval_shape(opt.init, ...)`.

Large models are set up without allocating them (`jax.ShapeDtypeStruct` params, then
`jax.jit(opt.init, out_shardings=...)`), so an `init` must not read values, convert a param
with float() or np.asarray, or need a concrete key. The cases are the conformance cases, so a
new public name cannot escape.
"""

import jax
import jax.numpy as jnp
import pytest
from test_conformance import CASES, _public_transformations

from gradxform.testing import default_params


def test_every_public_transformation_has_a_case():
    missing = _public_transformations() - set(CASES)
    assert not missing, f"add a conformance case to CASES for: {sorted(missing)}"


@pytest.fixture(scope="module")
def params():
    return default_params()


@pytest.mark.parametrize("name", sorted(CASES))
def test_abstract_init_equals_the_concrete_one(name, params):
    opt = CASES[name]()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    shapes = jax.eval_shape(opt.init, abstract)
    state = opt.init(params)
    assert jax.tree.structure(shapes) == jax.tree.structure(state)
    for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(shapes),
                            strict=True):
        where = jax.tree_util.keystr(path)
        assert isinstance(s, jax.ShapeDtypeStruct), where
        assert (s.shape, s.dtype) == (jnp.shape(x), jnp.result_type(x)), where
