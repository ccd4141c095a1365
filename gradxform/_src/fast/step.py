"""One-call optimizer steps: update and apply in one function, params and state donated.

    step = make_step(opt)
    params, state = step(grads, state, params)

is `updates, state = opt.update(grads, state, params); params = apply_updates(params, updates)`
compiled as one computation, so the update never exists as a separate array. The params and
the state are donated (their buffers are reused for the results), which avoids allocating and
page-faulting fresh output buffers on every step (4-5x on CPU for large trees). On the CPU the
run of elementwise transformations that ends the chain goes through the vector kernel
(fusion.py), in place, as one pass over memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradxform._src.fast import fusion
from gradxform._src.protocol import caches
from gradxform._src.protocol.transformation import (
    OptState,
    Params,
    Transformation,
    Updates,
    require_transformation,
)
from gradxform._src.protocol.updates import apply_updates


def update_and_apply(optimizer: Transformation, grads: Updates, state: OptState, params: Params,
                     **extra_args: Any) -> tuple[Params, OptState]:
    """θ_t = θ_{t-1} + u_t with (u_t, state_t) = optimizer.update(g_t, state_{t-1}, θ_{t-1}).

    Exactly `update` followed by `apply_updates`; call it inside your own jitted training step
    so XLA fuses the two (or use `make_step`, which jits and donates for you).

    Args:
      optimizer: a transformation.
      grads: the gradients g_t, a tree like params.
      state: the optimizer state.
      params: the params θ_{t-1}.
      **extra_args: passed to `optimizer.update`.

    Returns:
      `(params, state)` after the step.
    """
    updates, state = optimizer.update(grads, state, params, **extra_args)
    return apply_updates(params, updates), state


def _step(treedef, fused: bool, donate: bool, hyper, params, state, grads, extra_args):
    optimizer = jax.tree_util.tree_unflatten(treedef, hyper)
    # Not donated, the kernel would write fresh arrays as XLA does, and was measured slower
    # there (AdamW on 16.8 M params: 353 ms against 274 ms): it runs on donated steps only.
    if fused and donate and not extra_args:
        # Decided while tracing, once per structure and shapes of params: nothing per call.
        stepped = fusion.update_and_apply(optimizer, grads, state, params, in_place=donate)
        if stepped is not None:
            return stepped
    return update_and_apply(optimizer, grads, state, params, **extra_args)


@caches.lru_cache(maxsize=256)
def _compiled(treedef, fused: bool, donate: bool):
    """The jitted step of a recipe: every `make_step` of the same recipe (the optimizer's
    structure) shares it and its compilations, and its numeric hyperparameters are arguments,
    so other values reuse the compiled step. The recipe is bound here, not passed as a static
    argument, so that a call does not hash the recipe again.

    Params and state come first because they are returned in that order: jax pairs donated
    inputs with outputs of the same shape in order, and with (grads, state, params) it would
    give the params' output the first moment's buffer, and XLA would add a copy of every moment
    and every param to each step (measured: 9x slower for Adam on 16.8 M params)."""
    return jax.jit(functools.partial(_step, treedef, fused, donate),
                   donate_argnums=(1, 2) if donate else ())


def make_step(optimizer: Transformation, *, donate: bool = True, fused: bool = True
              ) -> Callable[..., tuple[Any, Any]]:
    """A jitted `step(grads, state, params, **extra_args) -> (params, state)` for `optimizer`.

    The step is `update_and_apply` compiled as one computation. With `donate=True` (default)
    the buffers of `params` and `state` are given to XLA for the results: do not use the arrays
    you passed in after the call (jax raises if you do). Donation makes the step markedly
    faster on CPU; pass `donate=False` to keep the inputs alive.

    The optimizer is passed to the compiled function as data, so steps made for optimizers with
    the same recipe and different hyperparameter values share one compilation.

    On XLA:CPU, the elementwise transformations of a chain (each run of consecutive ones, led
    by `clip_by_global_norm` or not, and the final θ + u) run as one pass over memory through
    a vector kernel, for leaves of float32 params and gradients with at least
    2**14 elements (float32 or bfloat16 moments); XLA:CPU compiles such a chain into several
    passes. The kernel computes each operation of the transformations' equations in float32
    with one rounding, as numpy does; XLA may contract a product and a sum into one fused
    multiply-add, so the two differ by a few units in the last place. With `fused=False`, on
    other backends, on smaller leaves, or where the extension was not built, the step is the
    XLA program, bit for bit `update` followed by `apply_updates` in one jit.
    `gradxform._src.fast.kernel.status()` says which applies and why.

    Args:
      optimizer: a transformation.
      donate: donate params and state to the step.
      fused: run elementwise runs through the kernel where it applies.

    Returns:
      `step(grads, state, params, **extra_args) -> (params, state)`.
    """
    require_transformation(optimizer, "make_step", "optimizer")
    # Flattened once here rather than on every call: a chain's Python-level flattening costs
    # more than the whole step of a small model. Numbers become arrays once, for the same reason.
    leaves, treedef = jax.tree_util.tree_flatten(optimizer)
    hyper = [jnp.asarray(x) for x in leaves]
    jitted = _compiled(treedef, fused, donate)

    def step(grads, state, params, **extra_args):
        return jitted(hyper, params, state, grads, extra_args)

    step.__doc__ = f"One {'donating ' if donate else ''}step of {optimizer!r}."
    return step
