"""Every public transformation and optimizer goes through gradxform.testing.check_transformation."""

import inspect

import jax
import jax.numpy as jnp
import optax
import pytest

import gradxform as gx
from gradxform._src import presets
from gradxform.testing import check_transformation, default_params

# The matrices of gradxform.testing.default_params (Muon orthogonalizes matrices only).
_MATRICES = {"dense": {"w": True, "b": False}, "scale": False, "frozen": False, "empty": False}

# One zero-argument factory per public transformation or optimizer, under its public name.
CASES = {
    # scaling.py
    "identity": lambda: gx.identity(),
    "set_to_zero": lambda: gx.set_to_zero(),
    "scale": lambda: gx.scale(-0.1),
    "scale_by_learning_rate": lambda: gx.scale_by_learning_rate(0.1),
    "scale_by_sign": lambda: gx.scale_by_sign(),
    "add_decayed_weights": lambda: gx.add_decayed_weights(0.1, mask=lambda p: {
        k: k != "scale" for k in p}),
    "chain": lambda: gx.chain(gx.trace(0.9), gx.scale(-0.1)),
    # momentum.py
    "ema": lambda: gx.ema(0.9),
    "trace": lambda: gx.trace(0.9, nesterov=True, dampening=0.1),
    # adaptive.py
    "scale_by_rss": lambda: gx.scale_by_rss(),
    "scale_by_rms": lambda: gx.scale_by_rms(bias_correction=True),
    "scale_by_stddev": lambda: gx.scale_by_stddev(eps_in_sqrt=False),
    # adam.py
    "scale_by_adam": lambda: gx.scale_by_adam(nesterov=True),
    "scale_by_amsgrad": lambda: gx.scale_by_amsgrad(max_of="raw"),
    "scale_by_adamax": lambda: gx.scale_by_adamax(),
    "scale_by_radam": lambda: gx.scale_by_radam(),
    "scale_by_nadam": lambda: gx.scale_by_nadam(),
    "scale_by_lion": lambda: gx.scale_by_lion(),
    # adam_variants.py
    "scale_by_belief": lambda: gx.scale_by_belief(nesterov=True),
    "scale_by_yogi": lambda: gx.scale_by_yogi(eps_root=1e-8),
    "scale_by_adan": lambda: gx.scale_by_adan(lookahead="paper"),
    "adabelief": lambda: gx.adabelief(1e-3),
    "yogi": lambda: gx.yogi(1e-2),
    "adan": lambda: gx.adan(1e-3, weight_decay=1e-2),
    # alias.py
    "sgd": lambda: gx.sgd(0.1, 0.9, weight_decay=1e-2),
    "adagrad": lambda: gx.adagrad(0.1),
    "rmsprop": lambda: gx.rmsprop(0.01, centered=True, momentum=0.9),
    "adam": lambda: gx.adam(1e-3),
    "adamw": lambda: gx.adamw(1e-3),
    "adamax": lambda: gx.adamax(1e-3),
    "nadam": lambda: gx.nadam(1e-3, momentum_decay=4e-3),
    "radam": lambda: gx.radam(1e-3),
    "amsgrad": lambda: gx.amsgrad(1e-3),
    "lion": lambda: gx.lion(1e-4),
    # clipping.py
    "clip": lambda: gx.clip(0.5),
    "clip_by_block_rms": lambda: gx.clip_by_block_rms(0.5),
    "clip_by_global_norm": lambda: gx.clip_by_global_norm(1.0),
    "adaptive_grad_clip": lambda: gx.adaptive_grad_clip(0.1),
    "zero_nans": lambda: gx.zero_nans(),
    # combinators.py
    "masked": lambda: gx.masked(gx.adam(1e-2), lambda p: {k: k != "scale" for k in p}),
    "partition": lambda: gx.partition({"a": gx.adamw(1e-2), "b": gx.sgd(0.1, 0.9)},
                                      {"dense/w": "a", "**": "b"}),
    "partition_with_frozen_group": lambda: gx.partition(
        {"a": gx.adam(1e-2), "frozen": gx.set_to_zero()},
        {"dense": "a", "scale": "frozen", "frozen": None, "empty": "a"}),
    "freeze": lambda: gx.freeze({"dense": True, "scale": False, "frozen": False,
                                 "empty": False}),
    "named_chain": lambda: gx.named_chain(("clip", gx.clip_by_global_norm(1.0)),
                                          ("adam", gx.adam(1e-2))),
    # wrappers.py
    "MultiSteps": lambda: gx.MultiSteps(gx.adam(1e-2), 2),
    "apply_if_finite": lambda: gx.apply_if_finite(gx.adam(1e-2), 2),
    # averaging.py
    "lookahead": lambda: gx.lookahead(gx.sgd(0.1, 0.9), 2, 0.5, reset_state=True),
    "ema_params": lambda: gx.chain(gx.sgd(0.1), gx.ema_params(0.9, debias=True, warmup=10.0)),
    # interop.py
    "from_optax": lambda: gx.from_optax(optax.sgd(0.1, momentum=0.9)),
    # flatten.py
    "flatten": lambda: gx.flatten(gx.adamw(1e-2)),
    # sophia.py, muon.py, schedule_free.py, adafactor.py, quantized.py
    "scale_by_sophia": lambda: gx.scale_by_sophia(),
    "scale_by_muon": lambda: gx.masked(gx.scale_by_muon(), _MATRICES),
    "scale_by_shape": lambda: gx.masked(gx.scale_by_shape(consistent_rms=0.2), _MATRICES),
    "muon": lambda: gx.muon(0.02, weight_decay=0.1),
    "schedule_free": lambda: gx.schedule_free_adamw(1e-2, warmup_steps=2, weight_decay=1e-3),
    "scale_by_factored_rms": lambda: gx.scale_by_factored_rms(min_dim_size_to_factor=2),
    "scale_by_param_block_rms": lambda: gx.scale_by_param_block_rms(),
    "adafactor": lambda: gx.adafactor(1e-2, min_dim_size_to_factor=2, momentum=0.9),
    "sophia": lambda: gx.sophia(1e-2),
    "schedule_free_sgd": lambda: gx.schedule_free_sgd(0.1, warmup_steps=2, weight_decay=1e-3),
    "schedule_free_adamw": lambda: gx.schedule_free_adamw(1e-2),
    "quantize_state": lambda: gx.quantize_state(gx.adamw(1e-3), block_size=4, min_size=2),
}


def _public_transformations():
    names = set()
    for name in gx.__all__:
        value = getattr(gx, name)
        if inspect.isclass(value) and issubclass(value, gx.Transformation) \
                and value not in (gx.Transformation, gx.ElementwiseTransformation):
            names.add(name)
        elif inspect.isfunction(value) and value.__module__.startswith(presets.__name__ + "."):
            names.add(name)  # every preset, wherever in gradxform/_src/presets it is assembled
    return names


def test_every_public_transformation_is_checked():
    missing = _public_transformations() - set(CASES)
    assert not missing, f"add a conformance case to CASES for: {sorted(missing)}"


def _with_hessian(params):
    return {"hessian": jax.tree.map(lambda x: jnp.abs(x) + jnp.asarray(0.5, x.dtype), params)}


# Keyword arguments of `update` for the cases that need them: Sophia refuses to run without
# a Hessian estimate.
EXTRA_ARGS = {"scale_by_sophia": _with_hessian, "sophia": _with_hessian}


@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance(name):
    make = EXTRA_ARGS.get(name)
    if make is None:
        check_transformation(CASES[name]())
    else:
        check_transformation(CASES[name](), extra_args=make(default_params()),
                             make_extra_args=make)
