"""A noisy-features regression: where coupled L2 and decoupled weight decay part ways.

A linear model sees a few informative features and many uninformative ones of higher variance
(noisy features exhibit high variance). With about as many features as training
points, least squares can fit the label noise by leaning on the noisy features, giving them
sizeable weights that do not generalize.

Weight decay should pull those weights back. Coupled L2 in Adam, g + λθ, passes through Adam's
division by √v̂, so a weight whose gradients are large (a high-variance feature's) is decayed
only λ/√v̂ per unit step: the weights that most need decay get the least. AdamW decays every
weight by ηλθ regardless of its gradient history (Loshchilov & Hutter, 2019).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradxform._src.presets.alias import adam, adamw
from gradxform._src.protocol.updates import apply_updates
from gradxform.demo.experiments.common import quick_jit


class NoisyFeatures(NamedTuple):
    """Train/test split; the first `n_signal` columns of x are informative, the rest noise."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    w_true: Any


def noisy_features_data(
    key, *, n_train: int = 50, n_test: int = 2000, n_signal: int = 5, n_noise: int = 45,
    noise_scale: float = 3.0, label_noise: float = 0.5,
) -> NoisyFeatures:
    """y = x_signal · w* + σε with x_signal ~ N(0, I), w* ~ N(0, I), ε ~ N(0, 1), σ = label_noise;
    the noisy columns are independent of y, ~ N(0, noise_scale² I)."""
    k_sig, k_noise, k_w, k_eps = jax.random.split(key, 4)
    n = n_train + n_test
    x = jnp.concatenate([
        jax.random.normal(k_sig, (n, n_signal)),
        noise_scale * jax.random.normal(k_noise, (n, n_noise)),
    ], axis=1)
    w_true = jax.random.normal(k_w, (n_signal,))
    y = x[:, :n_signal] @ w_true + label_noise * jax.random.normal(k_eps, (n,))
    return NoisyFeatures(x[:n_train], y[:n_train], x[n_train:], y[n_train:], w_true)


def mse(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


class RegressionRun(NamedTuple):
    """Final weights and bias, train and test mean squared error, final optimizer state."""

    w: Any
    b: Any
    train_mse: Any
    test_mse: Any
    state: Any


def weight_decay_optimizers(learning_rate: float = 3e-2, weight_decay: float = 0.1) -> dict:
    """Adam without decay, Adam with coupled L2 (torch.optim.Adam(weight_decay=λ)) and AdamW,
    all with the same η and λ."""
    return {
        "Adam": adam(learning_rate),
        "Adam + L2": adam(learning_rate, weight_decay=weight_decay),
        "AdamW": adamw(learning_rate, weight_decay=weight_decay),
    }


@quick_jit(static_argnames=("steps", "batch_size"))
def train_regression(optimizer, data: NoisyFeatures, key, *, steps: int = 2000,
                     batch_size: int = 10) -> RegressionRun:
    """Fits y ≈ x·w + b from zero with `optimizer` on random mini-batches (one `lax.scan`).

    Pure and jitted: `jax.vmap` over `data` and `key` runs several data sets at once, and an
    optimizer built inside a vmapped function from a traced λ sweeps weight decays.
    """
    x, y = data.x_train, data.y_train
    params = {"w": jnp.zeros(x.shape[1], x.dtype), "b": jnp.zeros((), x.dtype)}

    def step(carry, key):
        params, state = carry
        batch = jax.random.choice(key, x.shape[0], (batch_size,), replace=False)
        grads = jax.grad(mse)(params, x[batch], y[batch])
        updates, state = optimizer.update(grads, state, params)
        return (apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(
        step, (params, optimizer.init(params)), jax.random.split(key, steps)
    )
    return RegressionRun(
        w=params["w"], b=params["b"], train_mse=mse(params, x, y),
        test_mse=mse(params, data.x_test, data.y_test), state=state,
    )


def run_noisy_features(optimizer, *, seeds: int = 8, steps: int = 2000, **data_kwargs):
    """`train_regression` on `seeds` independent data sets at once (vmapped).

    Returns the data sets and the runs; every array has a leading axis of length `seeds`. Pure,
    so it can itself be vmapped, e.g. over a weight decay the optimizer is built from.
    """
    keys = jax.random.split(jax.random.key(0), seeds)
    data_keys, train_keys = keys, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    data = jax.vmap(lambda k: noisy_features_data(k, **data_kwargs))(data_keys)
    runs = jax.vmap(lambda d, k: train_regression(optimizer, d, k, steps=steps))(data, train_keys)
    return data, runs
