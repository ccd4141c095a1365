"""Every public transformation and optimizer goes through gradxform.testing.check_transformation."""

import inspect

import jax
import jax.numpy as jnp
import optax
import pytest

import gradxform as gx
from gradxform._src import presets
from gradxform._src.protocol.fields import child
from gradxform.testing import check_transformation, default_params

# The matrices of gradxform.testing.default_params (Muon orthogonalizes matrices only).
_MATRICES = {"dense": {"w": True, "b": False}, "scale": False, "frozen": False, "empty": False}

@gx.pytree_dataclass
class _with_examples(gx.Transformation):
    """Feeds `inner` three per-example gradients (axis 0) made from each gradient, for the
    transformations that aggregate examples (DP-SGD): the checks then see params-shaped
    updates."""

    inner: gx.Transformation = child()

    def init(self, params):
        return self.inner.init(params)

    def update(self, updates, state, params=None, **extra_args):
        examples = jax.tree.map(
            lambda g: jnp.stack([g, -0.5 * g, 3 * g + 1]), updates)
        return self.inner.update(examples, state, params, **extra_args)


# One zero-argument factory per public transformation or optimizer, under its public name.
CASES = {
    # scaling.py
    "identity": lambda: gx.identity(),
    "set_to_zero": lambda: gx.set_to_zero(),
    "scale": lambda: gx.scale(-0.1),
    "scale_by_learning_rate": lambda: gx.scale_by_learning_rate(0.1),
    "scale_by_sign": lambda: gx.scale_by_sign(),
    "negate": lambda: gx.negate(),
    # step_adaptation.py
    "scale_by_adadelta": lambda: gx.scale_by_adadelta(),
    "scale_by_rprop": lambda: gx.scale_by_rprop(0.01, convention="torch"),
    "adadelta": lambda: gx.adadelta(1.0, weight_decay=1e-2),
    "rprop": lambda: gx.rprop(0.01),
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
    # iterate_averaging.py, torch_forms.py
    "polyak_averaging": lambda: gx.chain(gx.sgd(0.1), gx.polyak_averaging(1.0)),
    "swa_params": lambda: gx.chain(gx.sgd(0.1), gx.swa_params(start=1, every=2, decay=0.9)),
    "asgd": lambda: gx.asgd(0.1, t0=1.0, weight_decay=1e-2),
    "adafactor_torch": lambda: gx.adafactor_torch(1e-2, weight_decay=1e-2),
    # plateau.py (fed a metric: CHECK_OPTIONS)
    "reduce_on_plateau": lambda: gx.reduce_on_plateau(0.5, 1, cooldown=1),
    "reduce_lr_on_plateau": lambda: gx.reduce_lr_on_plateau(0.1, mode="max", patience=0),
    "scale_by_factored_rms_torch": lambda: gx.scale_by_factored_rms(
        epsilon=None, min_dim_size_to_factor=0, convention="torch"),
    # interop.py
    "from_optax": lambda: gx.from_optax(optax.sgd(0.1, momentum=0.9)),
    "with_extra_args_support": lambda: gx.with_extra_args_support(optax.sgd(0.1)),
    # flatten.py
    "flatten": lambda: gx.flatten(gx.adamw(1e-2)),
    # cautious_masking.py, transformers_adam.py, variance_reduction.py, variance_and_caution.py
    "cautious": lambda: gx.cautious(gx.scale_by_adam(), eps=1e-2),
    "cadamw": lambda: gx.cadamw(1e-2, weight_decay=1e-2),
    "scale_by_adam_transformers": lambda: gx.scale_by_adam_transformers(0.8, eps=1e-4),
    "scale_by_mars": lambda: gx.scale_by_mars(gamma=0.1),
    "mars": lambda: gx.mars(1e-2, weight_decay=1e-2),
    "mars_optimize_1d": lambda: gx.mars(1e-2, optimize_1d=True),
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
    # injection.py, optax's names
    "inject_hyperparams": lambda: gx.inject_hyperparams(gx.adamw)(
        1e-3, b1=gx.linear_schedule(0.8, 0.9, 10)),
    "multi_transform": lambda: gx.multi_transform({"a": gx.adam(1e-2), "b": gx.sgd(0.1, 0.9)},
                                                  {"dense/w": "a", "**": "b"}),
    "scale_by_schedule": lambda: gx.scale_by_schedule(gx.linear_schedule(0.1, 0.0, 10)),
    # conditional.py, monitoring.py, functions.py, apply_every: optax's wrappers
    "conditionally_transform": lambda: gx.conditionally_transform(
        gx.sgd(0.1, 0.9), lambda step: step % 2 == 0),
    "conditionally_mask": lambda: gx.conditionally_mask(gx.sgd(0.1, 0.9), lambda step: step > 0),
    "snapshot": lambda: gx.chain(gx.snapshot("norm", gx.global_norm), gx.sgd(0.1)),
    "monitor": lambda: gx.chain(gx.monitor({"norm": gx.global_norm}), gx.sgd(0.1)),
    "measure_with_ema": lambda: gx.monitor({"ema": gx.measure_with_ema(gx.global_norm, 0.9)}),
    "stateless": lambda: gx.stateless(lambda u, p: jax.tree.map(lambda g: 0.5 * g, u)),
    "stateless_with_tree_map": lambda: gx.stateless_with_tree_map(lambda g, p: 0.5 * g),
    "apply_every": lambda: gx.chain(gx.sgd(0.1), gx.apply_every(2)),
    # optax's sign, noise, optimistic and layer-wise optimizers (optimistic.py, noise.py,
    # layerwise.py, constraints.py, alias.py)
    "sign_sgd": lambda: gx.sign_sgd(1e-3),
    "signum": lambda: gx.signum(1e-3, 0.8),
    "nadamw": lambda: gx.nadamw(1e-3, weight_decay=1e-2),
    "adamaxw": lambda: gx.adamaxw(1e-3, mask={"dense": True, "scale": False, "frozen": False,
                                              "empty": True}),
    "add_noise": lambda: gx.add_noise(0.01, 0.55, 0),
    "noisy_sgd": lambda: gx.noisy_sgd(1e-2, key=jax.random.key(3)),
    "scale_by_optimistic_gradient": lambda: gx.scale_by_optimistic_gradient(0.5, 2.0),
    "optimistic_gradient_descent": lambda: gx.optimistic_gradient_descent(1e-2),
    "optimistic_adam": lambda: gx.optimistic_adam(1e-2),
    "optimistic_adam_v2": lambda: gx.optimistic_adam_v2(1e-2, alpha=0.5, beta=2.0),
    "scale_by_novograd": lambda: gx.scale_by_novograd(weight_decay=0.1),
    "novograd": lambda: gx.novograd(1e-2),
    "keep_params_nonnegative": lambda: gx.chain(gx.sgd(0.1), gx.keep_params_nonnegative()),
    # trust_ratio.py, cover_statistics.py, polyak.py, distance_over_gradients.py, normalizing.py
    "scale_by_trust_ratio": lambda: gx.scale_by_trust_ratio(1e-6, 0.5, 1e-8),
    "scale_by_param_block_norm": lambda: gx.scale_by_param_block_norm(),
    "scale_and_shrink": lambda: gx.scale_and_shrink(0.1),
    "lamb": lambda: gx.lamb(1e-3, weight_decay=1e-2, mask=lambda p: {k: k != "scale"
                                                                     for k in p}),
    "lars": lambda: gx.lars(0.1, 1e-4, trust_ratio_mask={"dense": {"w": True, "b": False},
                                                         "scale": False, "frozen": False,
                                                         "empty": True}, nesterov=True),
    "fromage": lambda: gx.fromage(0.1),
    "scale_by_sm3": lambda: gx.scale_by_sm3(0.9, 0.99),
    "sm3": lambda: gx.sm3(0.1),
    "scale_by_polyak": lambda: gx.scale_by_polyak(-1.0, 0.5, 1e-6, "sps+"),
    "polyak_sgd": lambda: gx.polyak_sgd(0.5, 0.1, f_min=-1.0),
    "scale_by_distance_over_gradients": lambda: gx.scale_by_distance_over_gradients(1e-4),
    "centralize": lambda: gx.centralize(),
    "normalize_by_update_norm": lambda: gx.normalize_by_update_norm(-0.1),
    # gradxform.contrib (asynchronous_moments.py, slow_momentum.py, dual_averaging.py, ...)
    "scale_by_adopt": lambda: gx.contrib.scale_by_adopt(nesterov=True),
    "adopt": lambda: gx.contrib.adopt(1e-3),
    "scale_by_acprop": lambda: gx.contrib.scale_by_acprop(),
    "acprop": lambda: gx.contrib.acprop(1e-3, weight_decay=1e-2),
    "scale_by_ademamix": lambda: gx.contrib.scale_by_ademamix(),
    "ademamix": lambda: gx.contrib.ademamix(1e-3, weight_decay=1e-2),
    "scale_by_simplified_ademamix": lambda: gx.contrib.scale_by_simplified_ademamix(alpha=1.0),
    "simplified_ademamix": lambda: gx.contrib.simplified_ademamix(1e-3),
    "scale_by_madgrad": lambda: gx.contrib.scale_by_madgrad(1e-2),
    "madgrad": lambda: gx.contrib.madgrad(1e-2, weight_decay=1e-3),
    "scale_by_dog": lambda: gx.contrib.scale_by_dog(("learning_rate", 1e-2)),
    "dog": lambda: gx.contrib.dog(weight_decay=1e-3),
    "scale_by_dowg": lambda: gx.contrib.scale_by_dowg(),
    "dowg": lambda: gx.contrib.dowg(init_estim_sq_dist=1e-2, weight_decay=1e-3),
    "prodigy": lambda: gx.contrib.prodigy(weight_decay=1e-3, safeguard_warmup=True),
    "dadapt_adamw": lambda: gx.contrib.dadapt_adamw(weight_decay=1e-3),
    "momo": lambda: gx.contrib.momo(weight_decay=1e-3, adapt_lower_bound=True),
    "momo_adam": lambda: gx.contrib.momo_adam(weight_decay=1e-3),
    "mechanize": lambda: gx.contrib.mechanize(gx.adam(1e-2)),
    "sam": lambda: gx.contrib.sam(gx.sgd(0.1, 0.9), gx.chain(gx.contrib.normalize(),
                                                             gx.sgd(0.05))),
    "normalize": lambda: gx.chain(gx.contrib.normalize(), gx.scale(-0.1)),
    "split_real_and_imaginary": lambda: gx.contrib.split_real_and_imaginary(gx.adam(1e-2)),
    "differentially_private_aggregate": lambda: _with_examples(
        gx.contrib.differentially_private_aggregate(1.0, 0.5, 0)),
    "dpsgd": lambda: _with_examples(gx.contrib.dpsgd(0.1, 1.0, 0.5, 0, momentum=0.9)),
    "scale_by_cocob": lambda: gx.contrib.scale_by_cocob(),
    "cocob": lambda: gx.contrib.cocob(weight_decay=1e-3),
    # quasi_newton.py, linesearch.py, zoom.py, alias.py (full-batch optimisation)
    "scale_by_lbfgs": lambda: gx.scale_by_lbfgs(3),
    # (lbfgs with its zoom search would compile the whole search for every dtype the check
    # runs, minutes on 2 cores; the search has its own case, and tests/test_lbfgs.py runs the
    # preset with it against optax)
    "lbfgs": lambda: gx.lbfgs(0.5, memory_size=3, linesearch=None),
    "scale_by_zoom_linesearch": lambda: gx.scale_by_zoom_linesearch(8),
    "scale_by_backtracking_linesearch": lambda: gx.scale_by_backtracking_linesearch(
        8, store_grad=True),
}


# A line search evaluates the objective: its update takes value, grad and value_fn, which
# check_transformation passes to every update (built again for the bf16 and float64 params).
def _objective(params):
    return sum(0.5 * jnp.sum(x * x) + jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(params))


def _objective_arguments(params):
    value, grad = jax.value_and_grad(_objective)(params)
    return dict(value=value, grad=grad, value_fn=_objective)

# Keyword arguments of check_transformation for the cases that need them: the Polyak step
# size reads the loss at the params from update(..., value=loss).
def _with_hessian(params):
    return {"hessian": jax.tree.map(lambda x: jnp.abs(x) + jnp.asarray(0.5, x.dtype), params)}


CHECK_OPTIONS = {
    # Sophia refuses to run without a Hessian estimate.
    **{name: dict(extra_args=_with_hessian(default_params()), make_extra_args=_with_hessian)
       for name in ("scale_by_sophia", "sophia")},
    "scale_by_polyak": dict(extra_args={"value": 2.5}),
    "polyak_sgd": dict(extra_args={"value": 2.5}),
    "reduce_on_plateau": dict(extra_args={"value": 0.5}),
    "reduce_lr_on_plateau": dict(extra_args={"value": 0.5}),
    "momo": dict(extra_args={"value": 1.5}),
    "momo_adam": dict(extra_args={"value": 1.5}),
    **{name: dict(extra_args=_objective_arguments(default_params()),
                  make_extra_args=_objective_arguments)
       for name in ("scale_by_zoom_linesearch", "scale_by_backtracking_linesearch")},
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


def _contrib_transformations():
    """The transformations and optimizers of gradxform.contrib, under their names there."""
    names = set()
    for name in gx.contrib.__all__:
        value = getattr(gx.contrib, name)
        if inspect.isclass(value) and issubclass(value, gx.Transformation):
            names.add(name)
        elif inspect.isfunction(value) and value.__module__.startswith(presets.__name__ + "."):
            names.add(name)
    return names


def test_every_contrib_transformation_is_checked():
    missing = _contrib_transformations() - set(CASES)
    assert not missing, f"add a conformance case to CASES for: {sorted(missing)}"


def test_every_public_transformation_is_checked():
    missing = _public_transformations() - set(CASES)
    assert not missing, f"add a conformance case to CASES for: {sorted(missing)}"


# keyword arguments every `update` of these cases is given
@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance(name):
    check_transformation(CASES[name](), **CHECK_OPTIONS.get(name, {}))
