"""Which of optax 0.2.8's public optimizer-side names gradxform has, at the matching place.

`optax.X` is `gx.X`, `optax.contrib.X` is `gx.contrib.X`, `optax.tree_utils.X` is
`gx.tree_utils.X`, and so on for `tree`, `projections`, `schedules` and `microbatching`.
`optax.transforms` and `optax.second_order` have no namespace of their own in gradxform: their
names are looked up at top level, where optax also has most of them. Losses (`optax.losses` and
their re-exports at top level) and the namespaces `losses`, `perturbations`, `assignment` and
`experimental` are not the optimizer side and are left out. The README states the count this
test computes.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import optax

import gradxform as gx

# optax namespace -> the gradxform module where its names live
NAMESPACES = {
    "": ("", optax, gx),
    "contrib": ("contrib.", optax.contrib, gx.contrib),
    "tree_utils": ("tree_utils.", optax.tree_utils, gx.tree_utils),
    "tree": ("tree.", optax.tree, gx.tree),
    "projections": ("projections.", optax.projections, gx.projections),
    "schedules": ("schedules.", optax.schedules, gx.schedules),
    "transforms": ("transforms.", optax.transforms, gx),
    "microbatching": ("microbatching.", optax.microbatching, gx.microbatching),
    "second_order": ("second_order.", optax.second_order, gx),
}

NOT_OPTIMIZER_SIDE = ("losses", "perturbations", "assignment", "experimental")

# Losses optax re-exports at top level from optax.losses (checked below to be losses).
LOSSES = (
    "convex_kl_divergence", "cosine_distance", "cosine_similarity", "ctc_loss",
    "ctc_loss_with_forward_probs", "generalized_kl_divergence", "hinge_loss", "huber_loss",
    "kl_divergence", "l2_loss", "log_cosh", "ntxent", "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy", "sigmoid_focal_loss", "smooth_labels",
    "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels", "squared_error",
)

# Names gradxform spells differently: (the gradxform name, why). Each gradxform name is checked
# to exist at the matching place.
EQUIVALENT = {
    "AdaptiveGradClipState": ("CountState", "adaptive_grad_clip keeps a step count (for "
                              "schedules of its clipping)"),
    "AddDecayedWeightsState": ("CountState", "add_decayed_weights keeps a step count"),
    "ClipState": ("CountState", "clip keeps a step count"),
    "ScaleState": ("CountState", "scale keeps a step count (its factor may be a schedule)"),
    "ScaleByScheduleState": ("CountState", "scale_by_schedule is scale with a schedule"),
    "ScaleByTrustRatioState": ("CountState", "scale_by_trust_ratio keeps a step count"),
    "NonNegativeParamsState": ("EmptyState", "keep_params_nonnegative keeps no state"),
    "transforms.NonNegativeParamsState": ("EmptyState", "keep_params_nonnegative keeps no "
                                          "state"),
    "ScaleByRStdDevState": ("ScaleByStddevState", "optax's other spelling of the same state"),
    "MultiTransformState": ("PartitionState", "multi_transform is partition"),
    "Params": ("Transformation", "an annotation alias of optax (chex.ArrayTree); gradxform "
               "annotates params with typing.Any and the protocol with Transformation"),
    "Updates": ("Transformation", "an annotation alias of optax (chex.ArrayTree)"),
    "OptState": ("Transformation", "an annotation alias of optax (chex.ArrayTree)"),
    "TransformInitFn": ("Transformation", "a protocol of optax's init function; gradxform's "
                        "is the method Transformation.init"),
    "TransformUpdateFn": ("Transformation", "the method Transformation.update"),
    "TransformUpdateExtraArgsFn": ("Transformation", "the method Transformation.update, "
                                   "which always takes extra keyword arguments"),
    "ScalarOrSchedule": ("Schedule", "an annotation alias: a float or a Schedule"),
    "schedules.Schedule": ("Schedule", "gradxform's Schedule is at top level"),
    "MaskOrFn": ("masked", "an annotation alias of masked's mask argument"),
    "transforms.ConditionFn": ("conditionally_transform", "an annotation alias of "
                               "conditionally_transform's should_transform_fn"),
    "ShouldSkipUpdateFunction": ("skip_not_finite", "an annotation alias of MultiSteps' "
                                 "should_skip_update_fn; skip_not_finite is one"),
    "transforms.ShouldSkipUpdateFunction": ("skip_not_finite", "as ShouldSkipUpdateFunction"),
}

# Optimizer-side names gradxform does not have yet, with what they are.
NOT_IMPLEMENTED = {
    "LookaheadParams": "the (fast, slow) params pair of optax.lookahead; gradxform's lookahead "
                       "keeps the slow params in its state (LookaheadState) instead",
    "MaskedNode": "the placeholder of masked-out leaves in optax.masked's inner state",
    "transforms.MaskedNode": "as MaskedNode",
    "WrappedSchedule": "the schedule wrapper of optax.inject_stateful_hyperparams",
    "schedules.WrappedSchedule": "as WrappedSchedule",
    "InjectStatefulHyperparamsState": "the state of optax.inject_stateful_hyperparams",
    "schedules.InjectStatefulHyperparamsState": "as InjectStatefulHyperparamsState",
    "inject_stateful_hyperparams": "stateful schedules, not taken by inject_hyperparams",
    "schedules.inject_stateful_hyperparams": "as inject_stateful_hyperparams",
    "schedules.StatefulSchedule": "optax's protocol of stateful schedules",
    "tree_map_params": "mapping a function over the params-shaped leaves of an optimizer state",
    "tree_utils.tree_map_params": "as tree_map_params",
    "tree.map_params": "as tree_map_params",
    "contrib.galore": "GaLore (Zhao et al., 2024), low-rank gradient projection",
    "contrib.scale_by_galore": "GaLore's transformation",
    "contrib.GaLoreState": "GaLore's state",
    "contrib.GaLoreDimensionNumbers": "GaLore's matrix axes",
    "contrib.hutchinson_estimator_diag_hessian": "optax's Hutchinson estimator as a "
                                                 "transformation; gradxform has it as the "
                                                 "function hutchinson_diagonal",
    "contrib.HutchinsonState": "its state",
    "second_order.hvp": "deprecated in optax 0.2.8 (optax.second_order._deprecated)",
    "second_order.hessian_diag": "deprecated in optax 0.2.8",
    "second_order.fisher_diag": "deprecated in optax 0.2.8",
}


def _key(prefix: str, name: str) -> str:
    return prefix + name


def _optimizer_side_names() -> dict[str, object]:
    """{key: gradxform module} for every public optimizer-side name of optax."""
    names = {}
    for _, (prefix, module, target) in NAMESPACES.items():
        for name in dir(module):
            if name.startswith("_") or inspect.ismodule(getattr(module, name)):
                continue
            if prefix == "" and (name in LOSSES or name in NOT_OPTIMIZER_SIDE):
                continue
            names[_key(prefix, name)] = target
    return names


def _coverage() -> tuple[int, int, list[str]]:
    names = _optimizer_side_names()
    same = sorted(k for k, target in names.items() if hasattr(target, k.rsplit(".", 1)[-1]))
    return len(same), len(names), same


def test_excluded_losses_are_optax_losses():
    for name in LOSSES:
        assert getattr(optax, name) is getattr(optax.losses, name), name
    for name in NOT_OPTIMIZER_SIDE:
        assert inspect.ismodule(getattr(optax, name)), name


def test_every_optimizer_side_name_resolves_or_is_explained():
    names = _optimizer_side_names()
    unexplained = []
    for key, target in names.items():
        name = key.rsplit(".", 1)[-1]
        if hasattr(target, name):
            assert key not in EQUIVALENT and key not in NOT_IMPLEMENTED, (
                f"{key} is in gradxform now: remove it from EQUIVALENT / NOT_IMPLEMENTED")
        elif key in EQUIVALENT:
            gx_name = EQUIVALENT[key][0]
            assert hasattr(gx, gx_name), f"{key}: gradxform's {gx_name} does not exist"
        elif key not in NOT_IMPLEMENTED:
            unexplained.append(key)
    assert not unexplained, f"optax names gradxform lacks, unexplained: {sorted(unexplained)}"
    stale = (set(EQUIVALENT) | set(NOT_IMPLEMENTED)) - set(names)
    assert not stale, f"not optax names: {sorted(stale)}"


def test_names_match_optax_values_where_both_are_the_same_idea():
    """A few spot checks that the same name is the same thing, not a namesake."""
    for name in ("adam", "chain", "tree_utils", "contrib", "schedules"):
        assert hasattr(gx, name)
    assert gx.contrib.reduce_on_plateau is gx.reduce_on_plateau
    assert gx.schedules.inject_hyperparams is gx.inject_hyperparams
    assert gx.tree.update_moment is gx.tree_utils.tree_update_moment is gx.update_moment


def test_readme_states_the_coverage():
    covered, total, _ = _coverage()
    equivalent, missing = len(EQUIVALENT), len(NOT_IMPLEMENTED)
    assert covered + equivalent + missing == total
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    stated = re.search(r"gradxform has (\d+) of optax 0\.2\.8's (\d+) public optimizer-side "
                       r"names under the same name at the same place, (\d+) more under another "
                       r"name, and lacks (\d+)", readme.replace("\n", " "))
    assert stated, "README: state the coverage (tests/test_optax_coverage.py computes it)"
    print(f"optax coverage: {covered} / {total} same name, {equivalent} equivalent, "
          f"{missing} missing")
    assert tuple(int(g) for g in stated.groups()) == (covered, total, equivalent, missing)
