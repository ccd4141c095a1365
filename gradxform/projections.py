"""Euclidean projections of pytrees onto convex sets: optax.projections' names and numbers.

    from gradxform import projections
    params = projections.projection_l2_ball(gx.apply_updates(params, updates), scale=1.0)

Each solves argmin_p ‖x - p‖² subject to p in the set, the tree's elements taken as one vector:
`projection_non_negative`, `projection_box` (lower ≤ p ≤ upper), `projection_hypercube`
(0 ≤ p ≤ scale), `projection_simplex` (p ≥ 0, Σ p = scale), `projection_l1_sphere`,
`projection_l1_ball`, `projection_l2_sphere`, `projection_l2_ball`, `projection_linf_ball`,
`projection_vector` (onto the line through a), `projection_hyperplane` (⟨a, p⟩ = b) and
`projection_halfspace` (⟨a, p⟩ ≤ b).
"""

from gradxform._src.trees.projections import (
    projection_box,
    projection_halfspace,
    projection_hypercube,
    projection_hyperplane,
    projection_l1_ball,
    projection_l1_sphere,
    projection_l2_ball,
    projection_l2_sphere,
    projection_linf_ball,
    projection_non_negative,
    projection_simplex,
    projection_vector,
)

__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l1_sphere",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_simplex",
    "projection_vector",
]
