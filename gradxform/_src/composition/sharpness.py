"""Sharpness-aware minimisation: step with the gradient taken at an adversarial point nearby.

SAM minimises max_{‖ε‖ ≤ ρ} L(x + ε): it first moves to the adversarial point x + ε (an ascent
step of `adv_optimizer`, ε = ρ g/‖g‖ with `chain(normalize(), sgd(ρ))`), takes the gradient
there, and applies it to x with `optimizer`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, integer_at_least, static
from gradxform._src.protocol.transformation import Transformation, require_params
from gradxform._src.protocol.updates import apply_updates


class SAMState(NamedTuple):
    steps_since_sync: Any
    opt_state: Any
    adv_state: Any
    cache: Any


def pick(cond, if_true, if_false):
    """`if_true` where the scalar `cond` holds, else `if_false`, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), if_true, if_false)


@pytree_dataclass(positional=6)
class sam(Transformation):
    """SAM: `optimizer` steps with the gradient at the point `adv_optimizer` ascends to.

        ε = -adv_optimizer(g(x))        (k - 1 ascent steps, k = sync_period; SAM: k = 2)
        x ← x + optimizer(g(x + ε))

    Two ways to run it, as in optax's `contrib.sam`, whose numbers this keeps:
    - transparent (default): every call of `update` is one gradient evaluation; for k - 1
      calls the update is the ascent step (the params go to the adversarial point), and at
      the k-th the update takes the params back to the point cached at the start and applies
      the optimizer's step to it. The caller's loop is unchanged; the params it sees at the
      ascent steps are the adversarial ones.
    - opaque (`opaque_mode=True`): one `update` does the k - 1 ascent steps itself, calling
      `update(g, state, params, grad_fn=f)` with `f(params, i)` the gradient at `params`
      (averaged over `batch_axis_name` under pmap/shard_map when given).
    The adversarial optimizer's state is reset at each sync when `reset_state`.

    Args:
      optimizer: the outer optimizer.
      adv_optimizer: the ascent step written as a descent optimizer, whose update is negated:
        `chain(normalize(), sgd(ρ))` gives -ρ g/‖g‖, negated into SAM's ε = ρ g/‖g‖.
      sync_period: k ≥ 1.
      reset_state: re-initialise `adv_optimizer` at each sync.
      opaque_mode: see above.
      batch_axis_name: the axis to average `grad_fn`'s gradients over, in opaque mode.

    References:
      Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently
      Improving Generalization", ICLR 2021 (arXiv:2010.01412).
    """

    optimizer: Transformation = child()
    adv_optimizer: Transformation = child()
    sync_period: int = static(2, check=integer_at_least(1))
    reset_state: bool = static(True)
    opaque_mode: bool = static(False)
    batch_axis_name: str | None = static(None)

    def init(self, params):
        cache = None if self.opaque_mode else jax.tree.map(jnp.copy, params)
        return SAMState(steps_since_sync=jnp.zeros([], jnp.int32),
                        opt_state=self.optimizer.init(params),
                        adv_state=self.adv_optimizer.init(params), cache=cache)

    def update(self, updates, state, params=None, *, grad_fn=None, **extra_args):
        require_params(params, "sam", "the ascent starts from them")
        if self.opaque_mode:
            return self._opaque_update(updates, state, params, grad_fn)
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == self.sync_period - 1
        adv_updates, adv_state = self.adv_optimizer.update(updates, state.adv_state, params)
        adv_updates = jax.tree.map(lambda x: -x, adv_updates)
        opt_updates, opt_state = self.optimizer.update(updates, state.opt_state, state.cache)
        opt_updates = jax.tree.map(lambda c, p, u: c - p + u, state.cache, params, opt_updates)
        cache = pick(first, params, state.cache)
        out = pick(last, opt_updates, adv_updates)
        if self.reset_state:
            adv_state = pick(last, self.adv_optimizer.init(params), adv_state)
        else:
            adv_state = pick(last, state.adv_state, adv_state)
        opt_state = pick(last, opt_state, state.opt_state)
        steps = (state.steps_since_sync + 1) % self.sync_period
        return out, SAMState(steps_since_sync=steps, opt_state=opt_state, adv_state=adv_state,
                             cache=cache)

    def _opaque_update(self, updates, state, params, grad_fn):
        if grad_fn is None:
            raise ValueError("sam.update: grad_fn is required with opaque_mode=True: pass "
                             "update(grads, state, params, grad_fn=f), f(params, i) -> grads")
        adv_params, adv_updates, adv_state = params, updates, state.adv_state
        for i in range(self.sync_period - 1):
            adv_updates, adv_state = self.adv_optimizer.update(adv_updates, adv_state,
                                                               adv_params)
            adv_updates = jax.tree.map(lambda x: -x, adv_updates)
            adv_params = apply_updates(adv_params, adv_updates)
            adv_updates = grad_fn(adv_params, i)
            if self.batch_axis_name is not None:
                adv_updates = jax.lax.pmean(adv_updates, axis_name=self.batch_axis_name)
        if self.reset_state:
            adv_state = self.adv_optimizer.init(params)
        out, opt_state = self.optimizer.update(adv_updates, state.opt_state, params)
        return out, SAMState(steps_since_sync=jnp.zeros([], jnp.int32), opt_state=opt_state,
                             adv_state=adv_state, cache=None)

    def hyperparams(self, state) -> dict:
        return {name: t.hyperparams(st) for name, t, st in self._substates(state)
                if hasattr(t, "hyperparams")}

    def _substates(self, state):
        return [("optimizer", self.optimizer, state.opt_state),
                ("adv_optimizer", self.adv_optimizer, state.adv_state)]
