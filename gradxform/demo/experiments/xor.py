"""A small classification network: XOR of the signs of two Gaussian coordinates.

Label y = [x₀ > 0] ≠ [x₁ > 0] for x ~ N(0, I₂); a 2-16-16-1 ReLU MLP with a sigmoid output and
binary cross-entropy, mini-batches of 32, trained as torch.nn and torch.optim would.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradxform._src.presets.alias import adam, adamw, rmsprop, sgd
from gradxform._src.protocol.updates import apply_updates
from gradxform.demo.experiments.common import quick_jit


def xor_data(key, n: int = 1000):
    """n points x ~ N(0, I₂) and their labels y = [x₀ > 0] ≠ [x₁ > 0] (float32 0/1)."""
    x = jax.random.normal(key, (n, 2))
    y = ((x[:, 0] > 0) != (x[:, 1] > 0)).astype(jnp.float32)
    return x, y


def init_mlp(key, sizes=(2, 16, 16, 1)) -> list:
    """Layers [{"w": (fan_in, fan_out), "b": (fan_out,)}, ...] with torch.nn.Linear's default
    initialisation, W, b ~ U(-1/√fan_in, 1/√fan_in), so a torch network is reproduced."""
    layers = []
    for k, fan_in, fan_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
        kw, kb = jax.random.split(k)
        bound = 1.0 / np.sqrt(fan_in)
        layers.append({
            "w": jax.random.uniform(kw, (fan_in, fan_out), minval=-bound, maxval=bound),
            "b": jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound),
        })
    return layers


def mlp_logits(params, x):
    """The MLP's pre-sigmoid output, ReLU between layers; shape x.shape[:-1]."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return (x @ params[-1]["w"] + params[-1]["b"])[..., 0]


def bce_loss(params, x, y):
    """Binary cross-entropy of sigmoid(logits) against y, -[y log σ(z) + (1-y) log(1-σ(z))],
    written as softplus(z) - y z so that it stays finite for confident predictions."""
    z = mlp_logits(params, x)
    return jnp.mean(jax.nn.softplus(z) - y * z)


def accuracy(params, x, y):
    return jnp.mean((mlp_logits(params, x) > 0) == (y > 0.5))


class XorRun(NamedTuple):
    """The mean mini-batch loss of each epoch, shape (epochs,), final accuracies and params."""

    losses: np.ndarray
    train_accuracy: float
    test_accuracy: float
    params: list


def xor_optimizers() -> dict:
    """SGD, SGD with momentum, AdaGrad, RMSprop and Adam with torch.optim's arithmetic.

    torch.optim.RMSprop's defaults are decay 0.99 and ε outside the root.
    """
    return {
        "SGD": sgd(0.1),
        "SGD+Momentum": sgd(0.1, momentum=0.9),
        "RMSprop": rmsprop(0.01, decay=0.99, eps=1e-8, eps_in_sqrt=False),
        "Adam": adam(0.01),
        "AdamW": adamw(0.01, weight_decay=0.01),
    }


@quick_jit(static_argnames=("epochs", "batch_size"))
def _train(optimizer, params, x, y, key, epochs, batch_size):
    n_batches = x.shape[0] // batch_size

    def train_step(carry, batch):
        params, state = carry
        loss, grads = jax.value_and_grad(bce_loss)(params, x[batch], y[batch])
        updates, state = optimizer.update(grads, state, params)
        return (apply_updates(params, updates), state), loss

    def epoch(carry, key):
        order = jax.random.permutation(key, x.shape[0])[: n_batches * batch_size]
        carry, losses = jax.lax.scan(train_step, carry, order.reshape(n_batches, batch_size))
        return carry, jnp.mean(losses)

    carry = (params, optimizer.init(params))
    (params, _), losses = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
    return params, losses


def train_xor(
    optimizer, *, seed: int = 0, epochs: int = 100, batch_size: int = 32, n: int = 1000,
    n_test: int = 1000,
) -> XorRun:
    """Trains the 2-16-16-1 MLP on `n` XOR points with `optimizer`, reshuffling every epoch.

    The whole run (epochs × mini-batches) is two nested `lax.scan`s in one `jit`. The data, the
    initial weights and the shuffles depend only on `seed`, so optimizers are compared on
    identical runs. Each epoch takes n // batch_size full batches (31 for 1000 points in batches
    of 32): the last 8 points of a shuffle wait for the next epoch instead of making a short
    batch.
    Accuracy is measured on the training points and on `n_test` fresh ones.
    """
    k_data, k_test, k_init, k_shuffle = jax.random.split(jax.random.key(seed), 4)
    x, y = xor_data(k_data, n)
    x_test, y_test = xor_data(k_test, n_test)
    params, losses = _train(
        optimizer, init_mlp(k_init), x, y, k_shuffle, epochs=epochs, batch_size=batch_size
    )
    return XorRun(
        losses=np.asarray(losses),
        train_accuracy=float(accuracy(params, x, y)),
        test_accuracy=float(accuracy(params, x_test, y_test)),
        params=params,
    )


@quick_jit(static_argnames=("steps", "batch_size"))
def _loss_per_step(optimizer, key, steps, batch_size):
    k_data, k_init, k_batches = jax.random.split(key, 3)
    x, y = xor_data(k_data)
    params = init_mlp(k_init)

    def train_step(carry, key):
        params, state = carry
        batch = jax.random.choice(key, x.shape[0], (batch_size,), replace=False)
        grads = jax.grad(bce_loss)(params, x[batch], y[batch])
        updates, state = optimizer.update(grads, state, params)
        params = apply_updates(params, updates)
        return (params, state), bce_loss(params, x, y)

    carry = (params, optimizer.init(params))
    _, losses = jax.lax.scan(train_step, carry, jax.random.split(k_batches, steps))
    return jnp.concatenate([bce_loss(params, x, y)[None], losses])


def xor_loss_per_step(optimizer, *, seeds: int = 8, steps: int = 600,
                      batch_size: int = 32) -> np.ndarray:
    """The loss on all 1000 points before and after each step, for `seeds` independent runs.

    Each run draws its own data, initial weights and mini-batches (32 points without
    replacement per step) from its seed; the runs are vmapped into one compiled call. Returns an
    array of shape (seeds, steps + 1), for looking at the first steps closely (warmup).
    """
    keys = jax.random.split(jax.random.key(0), seeds)
    losses = jax.vmap(lambda k: _loss_per_step(optimizer, k, steps, batch_size))(keys)
    return np.asarray(losses)
