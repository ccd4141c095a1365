"""Euclidean projections of a pytree onto convex sets: optax.projections, with optax's numbers.

Each function solves  argmin_p ‖x - p‖²  subject to  p ∈ C  for the whole tree x, its elements
taken as one vector (the l1, l2 and simplex constraints couple the leaves; the box-like ones act
elementwise). A projected gradient step is `params = projection(apply_updates(params, updates))`.

A radius or scale given as a Python or NumPy number is checked when the function is called; an
array, possibly traced, is used as it is.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import flatten_util
from jax.typing import ArrayLike

from gradxform._src.protocol.fields import check_argument, non_negative, positive
from gradxform._src.trees.tree_math import (
    check_trees,
    tree_add_scale,
    tree_mul,
    tree_norm,
    tree_scale,
    tree_vdot,
)


def _check_scalar(owner: str, name: str, value, check) -> None:
    """Validates a Python or NumPy number (an array on a device is not read: no host sync)."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if isinstance(value, int | float | np.integer | np.floating) or (
            isinstance(value, np.ndarray) and value.ndim == 0):
        check_argument(owner, name, float(value), check)


def _is_one_leaf(x) -> bool:
    return x is not None and jax.tree_util.all_leaves([x])


def projection_non_negative(tree: Any) -> Any:
    """Projection onto the non-negative orthant: p = max(x, 0) elementwise."""
    return jax.tree.map(jax.nn.relu, tree)


def projection_box(tree: Any, lower: Any, upper: Any) -> Any:
    """Projection onto the box lower ≤ p ≤ upper: p = min(max(x, lower), upper) elementwise.

    Args:
      tree: the tree x to project.
      lower: the lower bound, a number (or array broadcast against every leaf) or a tree of the
        structure of `tree`.
      upper: the upper bound, likewise.

    Returns:
      The projected tree.
    """
    if isinstance(lower, int | float) and isinstance(upper, int | float) and lower > upper:
        raise ValueError(f"projection_box: lower must be <= upper, got lower={lower!r} > "
                         f"upper={upper!r}")
    bounds = {}
    for name, bound in (("lower", lower), ("upper", upper)):
        if _is_one_leaf(bound) and not _is_one_leaf(tree):
            bound = jax.tree.map(lambda _, b=bound: b, tree)  # the same bound for every leaf
        bounds[name] = bound
    check_trees("projection_box", {"tree": tree, **bounds})
    return jax.tree.map(jnp.clip, tree, bounds["lower"], bounds["upper"])


def projection_hypercube(tree: Any, scale: Any = 1) -> Any:
    """Projection onto the hypercube 0 ≤ p ≤ scale (the unit hypercube by default).

    Args:
      tree: the tree x to project.
      scale: the side, a number ≥ 0 or a tree of the structure of `tree`.
    """
    _check_scalar("projection_hypercube", "scale", scale, non_negative)
    return projection_box(tree, lower=0, upper=scale)


@jax.custom_jvp
def _projection_unit_simplex(values: jax.Array) -> jax.Array:
    """Projection of a vector onto {p ≥ 0, Σ p = 1}, by sorting (Held et al., 1974).

    With u the values sorted in decreasing order, ρ = max{j : u_j + (1 - Σ_{i≤j} u_i) / j > 0}
    and θ = (Σ_{i≤ρ} u_i - 1) / ρ, the projection is p = max(x - θ, 0).
    """
    s = 1
    u = jnp.sort(values)[::-1]
    cumsum_u = jnp.cumsum(u)
    ind = (jnp.arange(values.shape[0]) + 1).astype(values.dtype)
    cond = s / ind + (u - cumsum_u / ind) > 0
    idx = jnp.count_nonzero(cond)
    return jax.nn.relu(s / idx.astype(values.dtype) + (values - cumsum_u[idx - 1]
                                                       / idx.astype(values.dtype)))


@_projection_unit_simplex.defjvp
def _projection_unit_simplex_jvp(primals, tangents):
    # On the support S of p the projection is x ↦ x - mean_S(x) + 1/|S|, elsewhere constant:
    # its derivative maps a tangent t to 1_S ⊙ (t - mean_S(t)).
    (values,), (values_dot,) = primals, tangents
    primal_out = _projection_unit_simplex(values)
    supp = primal_out > 0
    card = jnp.count_nonzero(supp)
    tangent_out = supp * values_dot - (jnp.dot(supp, values_dot) / card) * supp
    return primal_out, tangent_out


def projection_simplex(tree: Any, scale: ArrayLike = 1) -> Any:
    """Projection onto the simplex {p ≥ 0, Σ p = scale} (the probability simplex by default).

    The tree's elements are projected as one vector, by sorting: p = scale · Π(x / scale) with
    Π the projection onto the unit simplex, p_i = max(x_i - θ, 0) for the threshold θ at which
    the sum is 1. Differentiable (the derivative of Π is given by `jax.custom_jvp`).

    Args:
      tree: the tree x to project.
      scale: the sum, > 0.

    Returns:
      The projected tree, each leaf in its dtype.

    References:
      Held, Wolfe & Crowder, 1974, "Validation of subgradient optimization"; Duchi et al., 2008,
      "Efficient projections onto the l1-ball for learning in high dimensions"
      (https://stanford.edu/~jduchi/projects/DuchiShSiCh08.pdf).
    """
    _check_scalar("projection_simplex", "scale", scale, positive)
    values, unravel = flatten_util.ravel_pytree(tree)
    if values.size == 0:
        return tree
    return unravel(jnp.multiply(scale, _projection_unit_simplex(jnp.divide(values, scale))))


def projection_l1_sphere(tree: Any, scale: ArrayLike = 1) -> Any:
    """Projection onto the l1 sphere ‖p‖_1 = scale: p = sign(x) ⊙ Π_simplex(|x|, scale).

    Args:
      tree: the tree x to project.
      scale: the radius, > 0.
    """
    _check_scalar("projection_l1_sphere", "scale", scale, positive)
    tree_abs = jax.tree.map(jnp.abs, tree)
    tree_sign = jax.tree.map(jnp.sign, tree)
    return tree_mul(tree_sign, projection_simplex(tree_abs, scale))


def projection_l1_ball(tree: Any, scale: ArrayLike = 1) -> Any:
    """Projection onto the l1 ball ‖p‖_1 ≤ scale: x itself inside it, else the l1 sphere's.

    Args:
      tree: the tree x to project.
      scale: the radius, > 0.

    References:
      Duchi et al., 2008, "Efficient projections onto the l1-ball for learning in high
      dimensions" (https://stanford.edu/~jduchi/projects/DuchiShSiCh08.pdf).
    """
    _check_scalar("projection_l1_ball", "scale", scale, positive)
    return jax.lax.cond(tree_norm(tree, ord=1) <= scale, lambda t: t,
                        lambda t: projection_l1_sphere(t, scale), tree)


def projection_l2_sphere(tree: Any, scale: ArrayLike = 1) -> Any:
    """Projection onto the l2 sphere ‖p‖_2 = scale: p = scale · x / ‖x‖_2.

    Args:
      tree: the tree x to project (not zero: every point of the sphere is then nearest).
      scale: the radius, ≥ 0.
    """
    _check_scalar("projection_l2_sphere", "scale", scale, non_negative)
    return tree_scale(scale / tree_norm(tree), tree)


def projection_l2_ball(tree: Any, scale: ArrayLike = 1) -> Any:
    """Projection onto the l2 ball ‖p‖_2 ≤ scale: p = x · scale / max(‖x‖_2, scale).

    Args:
      tree: the tree x to project.
      scale: the radius, > 0.
    """
    _check_scalar("projection_l2_ball", "scale", scale, positive)
    squared_norm = tree_norm(tree, squared=True)
    return tree_scale(scale / jnp.sqrt(jnp.maximum(squared_norm, scale ** 2)), tree)


def projection_linf_ball(tree: Any, scale: ArrayLike = 1) -> Any:
    """Projection onto the l∞ ball ‖p‖_∞ ≤ scale: every element clipped to [-scale, scale].

    Args:
      tree: the tree x to project.
      scale: the radius, ≥ 0.
    """
    _check_scalar("projection_linf_ball", "scale", scale, non_negative)
    lower = jax.tree.map(lambda x: jnp.full_like(x, -jnp.asarray(scale)), tree)
    upper = jax.tree.map(lambda x: jnp.full_like(x, scale), tree)
    return projection_box(tree, lower=lower, upper=upper)


def projection_vector(x: Any, a: Any) -> Any:
    """Projection onto the line through a: p = (⟨x, a⟩ / ⟨a, a⟩) a.

    Args:
      x: the tree to project.
      a: a nonzero tree of the structure of `x`.
    """
    check_trees("projection_vector", {"x": x, "a": a}, same_shapes=True)
    return tree_scale(tree_vdot(x, a) / tree_vdot(a, a), a)


def projection_hyperplane(x: Any, a: Any, b: ArrayLike) -> Any:
    """Projection onto the hyperplane ⟨a, p⟩ = b: p = x + ((b - ⟨a, x⟩) / ⟨a, a⟩) a.

    Args:
      x: the tree to project.
      a: the hyperplane's normal, a nonzero tree of the structure of `x`.
      b: the offset, a scalar.
    """
    check_trees("projection_hyperplane", {"x": x, "a": a}, same_shapes=True)
    ax: Any = tree_vdot(x, a)
    return tree_add_scale(x, (b - ax) / tree_vdot(a, a), a)


def projection_halfspace(x: Any, a: Any, b: ArrayLike) -> Any:
    """Projection onto the halfspace ⟨a, p⟩ ≤ b: x inside it, else onto its boundary hyperplane,
    p = x + min((b - ⟨a, x⟩) / ⟨a, a⟩, 0) a.

    Args:
      x: the tree to project.
      a: the halfspace's normal, a nonzero tree of the structure of `x`.
      b: the offset, a scalar.
    """
    check_trees("projection_halfspace", {"x": x, "a": a}, same_shapes=True)
    ax: Any = tree_vdot(x, a)
    scalar = jnp.clip((b - ax) / tree_vdot(a, a), max=0)
    return tree_add_scale(x, scalar, a)
