"""SM3: an adaptive step from second-moment statistics kept per set of a cover (Anil et al. 2019).

AdaGrad keeps one accumulator per parameter. SM3 covers the parameters of each leaf with
sets S_r (the rows and the columns of a matrix; for a k-dimensional array, the slices along each
axis) and keeps one accumulator μ(r) per set: n + m numbers for an n×m matrix instead of n·m.
A parameter's second moment is the smallest accumulator of the sets that contain it, an upper
bound on AdaGrad's that keeps the method's regret guarantee.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.primitives.moments import ema_step
from gradxform._src.protocol import tree_utils
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.elementwise import leaf_scalars
from gradxform._src.protocol.fields import hyperparameter, in_interval, non_negative
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation, safe_increment, zero_count


class ScaleBySM3State(NamedTuple):
    """`mu` holds per leaf a tuple of accumulators: one per axis (the slices along it) for
    arrays of rank 2 and more, the leaf's full accumulator for vectors and scalars. `nu` is the
    momentum of the preconditioned gradients."""

    count: Any
    mu: Any
    nu: Any

    @staticmethod
    def param_axes(field: str, tail: tuple, param_shape: tuple,
                   leaf_shape: tuple) -> tuple[int, ...] | None:
        """The param axes a state leaf keeps, for `gradxform.sharding.state_shardings`: the
        accumulator of axis a (the a-th of a leaf's tuple) lies along axis a of its param."""
        if field == "mu" and len(param_shape) >= 2 and len(tail) == 1:
            a = int(tail[0])
            return (a,) if leaf_shape == (param_shape[a],) else None
        if leaf_shape == param_shape:
            return tuple(range(len(param_shape)))
        return None


def _axis_shape(shape, axis: int) -> tuple[int, ...]:
    """`shape` with every axis but `axis` set to 1 (a slice accumulator, broadcastable)."""
    return tuple(n if i == axis else 1 for i, n in enumerate(shape))


def _gradient_weight(b2):
    """The weight of g² in the accumulator: 1 - β2, or 1 when β2 = 1 (plain sums, SM3 as in
    the paper)."""
    if isinstance(b2, int | float):
        return 1.0 if b2 == 1 else 1.0 - b2
    return jnp.where(b2 == 1, jnp.ones_like(b2), 1 - b2)


def _reject_complex(params) -> None:
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        if jnp.iscomplexobj(p):
            raise TypeError(f"scale_by_sm3: leaf '{tree_utils.path_str(path)}' is complex; SM3's "
                            f"maxima of squared gradients are defined for real params only")


@pytree_dataclass(positional=3)
class scale_by_sm3(Transformation):
    """SM3-II: the gradient over the root of the cover's accumulators, then momentum.

    For a leaf of rank k ≥ 2 with a slice accumulator μ_a per axis a (μ_a[j] covers the entries
    whose a-th index is j):

        ν_t(i) = (1 - β2) g_t(i)² + β2 min_a μ_{a,t-1}[i_a]     ((1 - β2) is 1 when β2 = 1)
        μ_{a,t}[j] = max_{i: i_a = j} ν_t(i)
        m_t = β1 m_{t-1} + (1 - β1) g_t / √(ν_t + ε)            (0 where ν_t = 0)
        u_t = m_t

    Vectors and scalars keep one accumulator per entry (the cover of singletons: AdaGrad's
    accumulator, ν_t = (1 - β2) g_t² + β2 ν_{t-1}). β2 = 1 (the default) is the paper's sum of
    squares; β2 < 1 an exponential average. As in optax, ε is added under the root and there
    is no bias correction. Unlike optax's, scalar leaves are accepted (optax's `scale_by_sm3`
    fails on them), and `sm3(momentum=None)` takes no momentum, as optax's docstring says.

    Args:
      b1: β1 in [0, 1), the momentum of the preconditioned gradients (0.9).
      b2: β2 in [0, 1], the decay of the accumulators (1.0).
      eps: ε ≥ 0, added to ν under the root (1e-8).

    Returns:
      A transformation with state `ScaleBySM3State(count, mu, nu)`.

    References:
      Anil, Gupta, Koren & Singer, "Memory-Efficient Adaptive Optimization", NeurIPS 2019,
      SM3-II (Algorithm 2), with the rows and columns of each matrix (slices of each tensor)
      as the cover.
    """

    b1: ScalarOrSchedule = hyperparameter(0.9, check=in_interval(0, 1, "[)"))
    b2: ScalarOrSchedule = hyperparameter(1.0, check=in_interval(0, 1, "[]"))
    eps: ScalarOrSchedule = hyperparameter(1e-8, check=non_negative)

    def init(self, params):
        _reject_complex(params)

        def accumulators(p):
            dt = tree_utils.moment_dtype(p)
            if jnp.ndim(p) < 2:
                return (jnp.zeros_like(p, dtype=dt),)
            return tuple(jnp.zeros((n,), dt) for n in jnp.shape(p))

        return ScaleBySM3State(count=zero_count(), mu=jax.tree.map(accumulators, params),
                               nu=tree_utils.zeros_like(params))

    def update(self, updates, state, params=None, **extra_args):
        hp = self.at(state.count)
        lookup = leaf_scalars(dict(b1=hp.b1, b2=hp.b2, w=_gradient_weight(hp.b2), eps=hp.eps))
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
        out, new_mu, new_nu = [], [], []
        for g, old_mu, m in zip(leaves, mus, nus, strict=True):
            s = lookup(m)
            g_w = tree_utils.widen(g, m)
            if g.ndim < 2:
                prior = old_mu[0]                                 # ν_{t-1}(i)
            else:
                prior = functools.reduce(jnp.minimum, [           # min_a μ_{a,t-1}[i_a]
                    jnp.reshape(mu_a, _axis_shape(g.shape, a)) for a, mu_a in enumerate(old_mu)])
            nu = s.w * (g_w * g_w) + s.b2 * prior                 # ν_t (the paper's ν')
            inv_root = jnp.where(nu > 0, jax.lax.rsqrt(nu + s.eps), jnp.zeros((), nu.dtype))
            m = ema_step(m, g_w * inv_root, s.b1)                 # β1 m + (1 - β1) g / √ν
            if g.ndim < 2:
                mu = (nu,)
            else:                                                 # μ_{a,t}[j] = max ν_t
                mu = tuple(jnp.max(nu, axis=tuple(i for i in range(g.ndim) if i != a),
                                   initial=0.0) for a in range(g.ndim))
            out.append(m.astype(g.dtype))
            new_mu.append(tuple(x.astype(o.dtype) for x, o in zip(mu, old_mu, strict=True)))
            new_nu.append(m)
        return treedef.unflatten(out), ScaleBySM3State(
            count=safe_increment(state.count), mu=treedef.unflatten(new_mu),
            nu=treedef.unflatten(new_nu))
