"""Shared by the tests that compare gradxform and optax trajectories step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

# 100-step trajectories agree to a few ulp when the optimizer does not amplify rounding.
TOL = {"float32": dict(rtol=1e-6, atol=5e-7), "float64": dict(rtol=1e-13, atol=1e-14)}


def stepper(opt, params, grads):
    """(initial carry, step) for `opt` (gradxform or optax) following the gradients `grads`."""
    def step(carry, t):
        p, s = carry
        u, s = opt.update(grads(p, t), s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (p, s)

    return (params, opt.init(params)), step


def run(steppers, steps=100):
    """The outputs of every stepper at every step, all in one lax.scan (one compilation)."""
    def body(carries, t):
        outs = [step(c, t) for (_, step), c in zip(steppers, carries)]
        return [c for c, _ in outs], [o for _, o in outs]

    return jax.jit(lambda: jax.lax.scan(body, [c for c, _ in steppers], jnp.arange(steps))[1])()


def assert_trees_close(a, b, tol, what=""):
    """Same structure, and every leaf close within `tol` (a dict of rtol/atol, or a TOL key)."""
    tol = TOL[tol] if isinstance(tol, str) else tol
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b), what
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol,
                                   err_msg=what + jax.tree_util.keystr(path))
