"""A comparison of optimizers on the Rosenbrock function, from (-0.5, 0.5), 500 steps.

    f(x, y) = (1 - x)² + 100 (y - x²)²,   minimum f(1, 1) = 0,

a narrow curved valley: the gradient points mostly across the valley, barely along it, which is
the situation momentum and per-coordinate scaling were invented for.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.composition.combine import chain
from gradxform._src.presets.alias import adagrad, adam, adamw, lion, rmsprop, sgd
from gradxform._src.primitives.moments import ema
from gradxform._src.primitives.scaling import scale_by_learning_rate
from gradxform._src.protocol.updates import apply_updates
from gradxform.demo.experiments.common import float64

START = (-0.5, 0.5)
MINIMUM = (1.0, 1.0)


def rosenbrock(p):
    """f(x, y) = (1 - x)² + 100 (y - x²)² for p = (x, y) (works on a leading batch axis too)."""
    x, y = p[..., 0], p[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


class Trajectory(NamedTuple):
    """The iterates θ_0 … θ_T, shape (T + 1, 2), and the loss f(θ_t) at each, shape (T + 1,)."""

    params: np.ndarray
    losses: np.ndarray

    @property
    def final(self) -> np.ndarray:
        return self.params[-1]


def classic_optimizers() -> dict:
    """SGD, momentum, RMSprop and Adam with the settings of the classic numpy comparison on the
    Rosenbrock function (SGD and momentum at 1e-3, RMSprop and Adam at 1e-2).

    Momentum is torch's form v = βv + g; RMSprop puts ε outside the root, lr / (√s + ε), as
    that numpy code does.
    """
    return {
        "SGD": sgd(1e-3),
        "Momentum": sgd(1e-3, momentum=0.9),
        "RMSprop": rmsprop(1e-2, decay=0.9, eps=1e-8, eps_in_sqrt=False),
        "Adam": adam(1e-2),
    }


def tour_optimizers() -> dict:
    """The four classic optimizers plus the others, each at a learning rate natural to its family.

    - Momentum (EMA form) v = βv + (1 - β)g at η/(1 - β) = 1e-2 takes exactly the steps of the
      torch form at η = 1e-3: the two conventions differ by a rescaled learning rate.
    - AdaGrad in torch's form (G_0 = 0, ε = 1e-10 outside the root): its steps shrink as G grows,
      so it starts larger than RMSprop, at 1e-1.
    - AdamW at Adam's 1e-2 with weight_decay 1e-2: on a problem whose minimum is at (1, 1) the
      decay pulls the wrong way a little.
    - Lion moves every coordinate by exactly η per step, so it runs 3× below Adam (its paper
      advises 3-10×), without weight decay.
    """
    classic = classic_optimizers()
    return {
        "SGD": classic["SGD"],
        "Momentum": classic["Momentum"],
        "Momentum (EMA form)": chain(ema(0.9, debias=False), scale_by_learning_rate(1e-2)),
        "Nesterov": sgd(1e-3, momentum=0.9, nesterov=True),
        "AdaGrad": adagrad(1e-1, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False),
        "RMSprop": classic["RMSprop"],
        "Adam": classic["Adam"],
        "AdamW": adamw(1e-2, weight_decay=1e-2),
        "Lion": lion(3e-3, weight_decay=0.0),
    }


@partial(jax.jit, static_argnames="steps")
def _descend(optimizer, start, steps):
    def step(carry, _):
        params, state = carry
        grads = jax.grad(rosenbrock)(params)
        updates, state = optimizer.update(grads, state, params)
        params = apply_updates(params, updates)
        return (params, state), params

    _, path = jax.lax.scan(step, (start, optimizer.init(start)), length=steps)
    return jnp.concatenate([start[None], path])


def run_rosenbrock(optimizer, *, start=START, steps: int = 500, x64: bool = True) -> Trajectory:
    """Runs `steps` steps of `optimizer` on the Rosenbrock function from `start`.

    The loop is one `lax.scan` inside `jit`; the optimizer is an argument of the jitted function,
    so optimizers of the same recipe share the compiled loop. With `x64=True` (the default) it
    runs in float64, like the numpy comparison, whose numbers it then reproduces to rounding.
    """
    with float64() if x64 else contextlib.nullcontext():
        dtype = jnp.float64 if x64 else jnp.float32
        path = _descend(optimizer, jnp.asarray(start, dtype), steps)
        path = np.asarray(path)
        losses = np.asarray(rosenbrock(path))
    return Trajectory(params=path, losses=losses)
