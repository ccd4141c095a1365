"""The dominant eigenpair by power iteration, and a matrix's inverse p-th root by coupled Newton.

optax 0.2.8's `optax.power_iteration` and `optax.matrix_inverse_pth_root` (the preconditioner
roots of Shampoo), with their arguments and numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from gradxform._src.trees.tree_math import tree_norm, tree_scale, tree_sub, tree_vdot


def _normalized(v: Any) -> Any:
    return tree_scale(1.0 / tree_norm(v), v)


def power_iteration(matrix: ArrayLike | Callable[[Any], Any], *, v0: Any = None,
                    num_iters: ArrayLike = 100, error_tolerance: ArrayLike = 1e-6,
                    precision: lax.Precision = lax.Precision.HIGHEST,
                    key: jax.Array | None = None) -> tuple[ArrayLike, Any]:
    """The dominant eigenvalue λ and its unit eigenvector v of a diagonalizable matrix A.

        v_{k+1} = A v_k / ‖A v_k‖,   λ_k = ⟨v_k, A v_k⟩

    until ‖A v_k - λ_k v_k‖ / |λ_k| < error_tolerance or after `num_iters` steps.

    Args:
      matrix: A, a square array, or a function computing the product A v of a tree v.
      v0: the starting vector (a tree like A's input when `matrix` is a function; required
        then). For an array, default: uniform in [-1, 1] drawn with `key`.
      num_iters: the most iterations.
      error_tolerance: the relative residual at which to stop.
      precision: the precision of the products A v for an array A.
      key: the random key of the default v0 (default `jax.random.PRNGKey(0)`).

    Returns:
      (λ, v).

    References: Golub & Van Loan, "Matrix Computations", 4th ed., §8.2.1.
    """
    if callable(matrix):
        if v0 is None:
            raise ValueError("power_iteration: v0 must be given when matrix is a function "
                             "(the structure of its input is not known)")
        mvp = matrix
    else:
        a = jnp.asarray(matrix)

        def mvp(v):
            return jnp.matmul(a, v, precision=precision)

        if v0 is None:
            key = jax.random.PRNGKey(0) if key is None else key
            v0 = jax.random.uniform(key, shape=a.shape[-1:], dtype=a.dtype,
                                    minval=-1.0, maxval=1.0)
    v0 = _normalized(v0)

    def not_converged(carry):
        v, z, eig, i = carry
        residual = tree_norm(tree_sub(z, tree_scale(eig, v)))
        return ~(jnp.abs(residual / eig) < error_tolerance) & (i < num_iters)

    def step(carry):
        _, z, _, i = carry
        v = _normalized(z)
        z = mvp(v)
        return v, z, tree_vdot(v, z), i + 1

    _, z, eig, _ = lax.while_loop(not_converged, step,
                                  (v0, mvp(v0), jnp.asarray(0.0), jnp.asarray(0)))
    return eig, _normalized(z)


def matrix_inverse_pth_root(matrix: ArrayLike, p: ArrayLike, num_iters: ArrayLike = 100,
                            ridge_epsilon: ArrayLike = 1e-6, error_tolerance: ArrayLike = 1e-6,
                            precision: lax.Precision = lax.Precision.HIGHEST
                            ) -> tuple[jax.Array, ArrayLike]:
    """(A + ε λ_max I)^{-1/p} of a symmetric positive semi-definite A, by coupled Newton steps.

        ε' = ε max(λ_max, 1e-16),  z = (1 + p) / (2 ‖A + ε' I‖_F)
        M_0 = z (A + ε' I),  H_0 = z^{1/p} I
        T_k = (1 - α) I + α M_k,  M_{k+1} = T_k^p M_k,  H_{k+1} = H_k T_k,  α = -1/p

    H_k → (A + ε' I)^{-1/p} while M_k → I; the iteration stops when max|M_k - I| is below
    `error_tolerance`, after `num_iters` steps, or when the error grows by more than 1.2× (then
    the previous H is returned). As in optax, the iteration runs in float32 identities (the
    result is cast to A's dtype) and p must be 1, 2, 4 or 8 (the power T^p is unrolled).

    Args:
      matrix: A, symmetric positive semi-definite.
      p: the root, a positive integer in {1, 2, 4, 8}.
      num_iters: the most Newton steps.
      ridge_epsilon: ε, the damping relative to A's largest eigenvalue.
      error_tolerance: the max|M - I| at which to stop.
      precision: the precision of the matrix products.

    Returns:
      (A + ε' I)^{-1/p} and the final error max|M - I|.

    References: Higham, "Functions of Matrices: Theory and Computation", SIAM 2008, eq. 7.18;
    Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018.
    """
    a = jnp.asarray(matrix)
    n = a.shape[0]
    alpha = jnp.asarray(-1.0 / p, jnp.float32)
    identity = jnp.eye(n, dtype=jnp.float32)
    max_ev, _ = power_iteration(a, num_iters=100, error_tolerance=1e-6, precision=precision)
    eps = ridge_epsilon * jnp.maximum(max_ev, 1e-16)

    def power(m, k):
        # m^k for k in {1, 2, 4, 8} by repeated squaring, chosen at run time.
        def square(x):
            return jnp.matmul(x, x, precision=precision)
        branches = [lambda x: x, square, lambda x: square(square(x)),
                    lambda x: square(square(square(x)))]
        return lax.switch(jnp.asarray(jnp.round(jnp.log2(k)), jnp.int32), branches, m)

    if n == 1:
        return (a + eps) ** alpha, 0

    def go_on(carry):
        i, _, _, _, error, improving = carry
        return (i < num_iters) & (error > error_tolerance) & improving

    def step(carry):
        i, m, h, _, error, _ = carry
        t = (1 - alpha) * identity + alpha * m
        new_m = jnp.matmul(power(t, p), m, precision=precision)
        new_h = jnp.matmul(h, t, precision=precision)
        new_error = jnp.max(jnp.abs(new_m - identity))
        return i + 1, new_m, new_h, h, new_error, new_error < error * 1.2

    damped = a + eps * identity
    z = (1 + p) / (2 * jnp.linalg.norm(damped))
    m0 = damped * z
    h0 = identity * jnp.power(z, 1.0 / p)
    _, m, h, old_h, _, converged = lax.while_loop(
        go_on, step, (0, m0, h0, h0, jnp.max(jnp.abs(m0 - identity)), True))
    error = jnp.max(jnp.abs(m - identity))
    keep = jnp.asarray(converged, old_h.dtype)
    return jnp.asarray(keep * h + (1 - keep) * old_h, a.dtype), error


def _spectral_radius_upper_bound(q: jax.Array) -> jax.Array:
    """min(‖Q‖_F, ‖Q‖_1) ≥ ρ(Q): both norms bound the spectral radius."""
    fro = jnp.linalg.matrix_norm(q, ord="fro")
    return jnp.minimum(fro, jnp.linalg.matrix_norm(q, ord=1) if q.size else 0)


def nnls(A: jax.Array, b: jax.Array, iters: int, unroll: int | bool = 1,  # noqa: N803
         L: ArrayLike | None = None) -> jax.Array:  # noqa: N803 (optax's names)
    """min ‖A x - b‖₂ subject to x ≥ 0, by Polyak's fast projected gradient.

        Q = Aᵀ A,  q = Aᵀ b,  x_0 = p_0 = 0,  c_0 = 0
        c_{k+1} = (1 + √(1 + 4 c_k²)) / 2,   s_k = (c_k - 1) / c_{k+1}
        x_{k+1} = max(p_k - (Q p_k - q) / L, 0),   p_{k+1} = x_{k+1} + s_k (x_{k+1} - x_k)

    Args:
      A: the matrix, shape (M, N).
      b: the right-hand side, shape (M,) or (M, K) (K problems at once).
      iters: the number of iterations (a fixed count, one `lax.scan`).
      unroll: `lax.scan`'s unroll.
      L: an upper bound of the spectral radius of AᵀA (default: min(‖Q‖_F, ‖Q‖_1)).

    Returns:
      x, shape (N,) or (N, K).

    References: Polyak, "Projected gradient method for non-negative least square",
    Contemporary Mathematics 636, 2015.
    """
    if A.ndim != 2 or b.ndim not in (1, 2) or b.shape[0] != A.shape[0]:
        raise ValueError(f"nnls: A must be (M, N) and b (M,) or (M, K), got A {A.shape} and "
                         f"b {b.shape}")
    q_mat = A.mT @ A
    q = A.mT @ b
    lip = _spectral_radius_upper_bound(q_mat) if L is None else L
    lip = jnp.where(lip == 0, 1, lip)

    def step(carry, _):
        x, p, c = carry
        c_next = (1 + jnp.sqrt(1 + 4 * c ** 2)) / 2
        s = (c - 1) / c_next
        x_next = (p - (q_mat @ p - q) / lip).clip(0)
        return (x_next, x_next + s * (x_next - x), c_next), None

    x0 = jnp.zeros_like(b, shape=A.shape[-1:] + b.shape[1:])
    (x, _, _), _ = lax.scan(step, (x0, x0, 0.0), length=iters, unroll=unroll)
    return x
