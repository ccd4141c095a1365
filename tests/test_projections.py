"""gradxform.projections against optax.projections and against numpy re-derivations.

Each projection runs on a multi-leaf tree (a matrix, a vector, a 3-D leaf, a scalar and a None
leaf) in float32 and float64. optax's function of the same name must give the same numbers to the
bit; numpy, in float64 on the flattened tree, derives each projection from its definition (the
simplex by sorting), and a projection p of x onto a convex set C must satisfy the optimality
condition ⟨x - p, z - p⟩ ≤ 0 for every z in C, checked at random points z of C.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradxform import projections, tree_utils

OP = optax.projections


def _tree(dtype, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    return {"dense": {"w": jnp.asarray(spread * rng.normal(size=(4, 3)), dtype),
                      "b": jnp.asarray(spread * rng.normal(size=(3,)), dtype)},
            "conv": jnp.asarray(spread * rng.normal(size=(2, 3, 2)), dtype),
            "scale": jnp.asarray(spread * rng.normal(), dtype),
            "frozen": None}


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    with jax.enable_x64(request.param == "float64"):
        yield jnp.dtype(request.param)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


def _tol(dtype):
    return {"rtol": 2e-6, "atol": 2e-6} if dtype == jnp.float32 else {"rtol": 1e-12,
                                                                       "atol": 1e-12}


def _simplex_np(v, s):
    """Projection onto {p ≥ 0, Σ p = s} by sorting (Duchi et al., 2008, Figure 1)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    j = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - (css - s) / j > 0)[0][-1]
    theta = (css[rho] - s) / (rho + 1)
    return np.maximum(v - theta, 0)


def _l1_ball_np(v, s):
    return v if np.abs(v).sum() <= s else np.sign(v) * _simplex_np(np.abs(v), s)


def _cases(x, a):
    """name -> (the call `call(lib, x, a)` for a library `lib`, the numpy projection of the flat
    x); x and a are the concrete trees, which the calls get again as traced arguments."""
    fa = _flat(a)
    ax = float(_flat(x) @ fa)

    def full(t, v):
        return jax.tree.map(lambda leaf: jnp.full_like(leaf, v), t)

    return {
        "non_negative": (lambda lib, x, a: lib.projection_non_negative(x),
                         lambda v: np.maximum(v, 0)),
        "box": (lambda lib, x, a: lib.projection_box(x, full(x, -0.2), full(x, 0.4)),
                lambda v: np.clip(v, -0.2, 0.4)),
        "simplex": (lambda lib, x, a: lib.projection_simplex(x), lambda v: _simplex_np(v, 1.0)),
        "simplex_2.5": (lambda lib, x, a: lib.projection_simplex(x, 2.5),
                        lambda v: _simplex_np(v, 2.5)),
        "l1_sphere": (lambda lib, x, a: lib.projection_l1_sphere(x, 2.0),
                      lambda v: np.sign(v) * _simplex_np(np.abs(v), 2.0)),
        "l1_ball": (lambda lib, x, a: lib.projection_l1_ball(x, 2.0),
                    lambda v: _l1_ball_np(v, 2.0)),
        "l1_ball_inside": (lambda lib, x, a: lib.projection_l1_ball(x, 100.0), lambda v: v),
        "l2_sphere": (lambda lib, x, a: lib.projection_l2_sphere(x, 1.5),
                      lambda v: 1.5 * v / np.linalg.norm(v)),
        "l2_ball": (lambda lib, x, a: lib.projection_l2_ball(x, 1.5),
                    lambda v: v * min(1.0, 1.5 / np.linalg.norm(v))),
        "l2_ball_inside": (lambda lib, x, a: lib.projection_l2_ball(x, 100.0), lambda v: v),
        "linf_ball": (lambda lib, x, a: lib.projection_linf_ball(x, 0.5),
                      lambda v: np.clip(v, -0.5, 0.5)),
        "vector": (lambda lib, x, a: lib.projection_vector(x, a),
                   lambda v: (v @ fa) / (fa @ fa) * fa),
        "hyperplane": (lambda lib, x, a: lib.projection_hyperplane(x, a, 0.3),
                       lambda v: v + (0.3 - v @ fa) / (fa @ fa) * fa),
        "halfspace": (lambda lib, x, a: lib.projection_halfspace(x, a, ax - 1.0),
                      lambda v: v + min((ax - 1.0 - v @ fa) / (fa @ fa), 0) * fa),
        "halfspace_inside": (lambda lib, x, a: lib.projection_halfspace(x, a, ax + 1.0),
                             lambda v: v),
    }


def test_same_values_as_optax_and_numpy(dtype):
    x, a = _tree(dtype, 0), _tree(dtype, 1)
    cases = _cases(x, a)
    both = jax.jit(lambda x, a: {name: (call(projections, x, a), call(OP, x, a))
                                 for name, (call, _) in cases.items()})(x, a)
    for name, (ours, theirs) in both.items():
        assert jax.tree.structure(ours) == jax.tree.structure(x), name
        for o, t, v in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), jax.tree.leaves(x),
                           strict=True):
            assert o.dtype == t.dtype == v.dtype, name
            np.testing.assert_array_equal(o, t, err_msg=name)
        np.testing.assert_allclose(_flat(ours), cases[name][1](_flat(x)), **_tol(dtype),
                                   err_msg=name)


def test_projections_are_optimal_at_random_points_of_the_set():
    """⟨x - p, z - p⟩ ≤ 0 for z in the set (the projection onto a convex set is the point p where
    the set lies on the far side of the hyperplane through p normal to x - p)."""
    with jax.enable_x64(True):
        x = _tree(jnp.float64, 0, spread=2.0)
        fx, rng = _flat(x), np.random.default_rng(5)
        n = fx.size

        def on_l1_ball(r):  # points of the ball: signed simplex points, scaled inside
            return rng.uniform(0, 1, (200, 1)) * np.sign(rng.normal(size=(200, n))) \
                * r * rng.dirichlet(np.ones(n), 200)

        def on_l2_ball(r):
            z = rng.normal(size=(200, n))
            return z / np.linalg.norm(z, axis=1, keepdims=True) * r * rng.uniform(0, 1, (200, 1))

        projected = jax.jit(lambda x: {
            "simplex": projections.projection_simplex(x, 2.0),
            "l1_ball": projections.projection_l1_ball(x, 2.0),
            "l2_ball": projections.projection_l2_ball(x, 1.5),
            "linf_ball": projections.projection_linf_ball(x, 0.5),
            "non_negative": projections.projection_non_negative(x)})(x)
        sets = {
            "simplex": (projected["simplex"], 2.0 * rng.dirichlet(np.ones(n), 200)),
            "l1_ball": (projected["l1_ball"], on_l1_ball(2.0)),
            "l2_ball": (projected["l2_ball"], on_l2_ball(1.5)),
            "linf_ball": (projected["linf_ball"], rng.uniform(-0.5, 0.5, (200, n))),
            "non_negative": (projected["non_negative"], np.abs(rng.normal(size=(200, n)))),
        }
        for name, (p, zs) in sets.items():
            fp = _flat(p)
            assert np.all((zs - fp) @ (fx - fp) <= 1e-10), name
        assert abs(_flat(sets["simplex"][0]).sum() - 2.0) < 1e-12
        assert abs(np.abs(_flat(sets["l1_ball"][0])).sum() - 2.0) < 1e-12


def test_scalar_bounds_on_multi_leaf_trees():
    """optax's projection_box maps jnp.clip over the tree and its bounds, so a scalar bound
    (projection_hypercube's default lower=0) fails on a tree of several leaves; here a number is
    the bound of every leaf, with the values of the same bound given as a tree."""
    x = _tree(jnp.float32, 2)

    def run(x):
        full = lambda v: jax.tree.map(lambda leaf: jnp.full_like(leaf, v), x)  # noqa: E731
        w = x["dense"]["w"]
        return {"box": (projections.projection_box(x, -0.2, 0.4),
                        OP.projection_box(x, full(-0.2), full(0.4))),
                "hypercube": (projections.projection_hypercube(x, 0.7),
                              OP.projection_box(x, full(0.0), full(0.7))),
                # a single array: optax's own functions work with numbers, and agree
                "array_hypercube": (projections.projection_hypercube(w, 0.7),
                                    OP.projection_hypercube(w, 0.7)),
                "array_box": (projections.projection_box(w, -0.2, 0.4),
                              OP.projection_box(w, -0.2, 0.4)),
                "unit_hypercube": (projections.projection_hypercube(x), None)}

    results = jax.jit(run)(x)
    for name, (ours, theirs) in results.items():
        if theirs is not None:
            np.testing.assert_array_equal(_flat(ours), _flat(theirs), err_msg=name)
    np.testing.assert_array_equal(_flat(results["unit_hypercube"][0]), np.clip(_flat(x), 0, 1))


def test_simplex_derivative_as_optax():
    """The custom JVP (derivative on the support, zero off it) is optax's."""
    v = jnp.asarray(np.random.default_rng(4).normal(size=7), jnp.float32)
    p, ours, theirs = jax.jit(lambda v: (projections.projection_simplex(v),
                                         jax.jacfwd(projections.projection_simplex)(v),
                                         jax.jacfwd(OP.projection_simplex)(v)))(v)
    np.testing.assert_array_equal(ours, theirs)
    p = np.asarray(p)
    support = p > 0
    k = support.sum()
    expected = np.where(np.outer(support, support), np.eye(7) - 1.0 / k, 0.0)
    np.testing.assert_allclose(ours, expected, atol=1e-7)


def test_names_and_signatures_are_optaxs():
    theirs = {n for n in dir(OP) if n.startswith("projection_")}
    assert set(projections.__all__) == theirs

    def shape(f):
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]

    for name in projections.__all__:
        assert shape(getattr(projections, name)) == shape(getattr(OP, name)), name


def test_bad_radius_and_mismatched_trees_are_refused():
    x, a = _tree(jnp.float32, 0), _tree(jnp.float32, 1)
    for name, bad, allowed in (("projection_simplex", 0.0, "> 0"),
                               ("projection_l1_ball", -1.0, "> 0"),
                               ("projection_l1_sphere", 0, "> 0"),
                               ("projection_l2_ball", -2.0, "> 0"),
                               ("projection_l2_sphere", -1.0, ">= 0"),
                               ("projection_linf_ball", -0.5, ">= 0"),
                               ("projection_hypercube", -1.0, ">= 0")):
        with pytest.raises(ValueError, match=f"{name}: scale must be {allowed}, got"):
            getattr(projections, name)(x, bad)
    with pytest.raises(TypeError, match="projection_simplex: scale must be a number, got True"):
        projections.projection_simplex(x, True)
    with pytest.raises(ValueError, match="projection_box: lower must be <= upper, got lower=1"):
        projections.projection_box(x, 1, 0)
    lacking = {**a, "dense": {"w": a["dense"]["w"]}}
    with pytest.raises(ValueError, match=r"projection_hyperplane: x and a must have the same tree "
                                         r"structure; 'dense/b' is in x but not in a"):
        projections.projection_hyperplane(x, lacking, 0.0)
    with pytest.raises(ValueError, match=r"projection_box: tree and lower .*'dense/b'"):
        projections.projection_box(x, tree_utils.tree_full_like(lacking, 0.0), 1.0)
    short = {**a, "conv": a["conv"][:1]}
    with pytest.raises(ValueError, match=r"projection_halfspace: leaf 'conv' has shape "
                                         r"\(2, 3, 2\) in x but \(1, 3, 2\) in a"):
        projections.projection_halfspace(x, short, 0.0)
    # a traced radius is not read (no host sync), and works
    traced, number = jax.jit(lambda x, r: (projections.projection_l2_ball(x, r),
                                           projections.projection_l2_ball(x, 1.5)))(x, 1.5)
    np.testing.assert_array_equal(_flat(traced), _flat(number))
