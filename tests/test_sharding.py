"""Sharded params and state on 8 fake CPU devices, run in a subprocess (tests/sharded_run.py).

XLA reads --xla_force_host_platform_device_count once, when the backend starts, so the run
gets its own interpreter and the flag never reaches the other tests.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from test_conformance import CASES

import gradxform as gx
from gradxform.sharding import state_shardings

SCRIPT = pathlib.Path(__file__).with_name("sharded_run.py")
PARAM_SPECS = {"['b']": [], "['emb']": ["model"], "['w']": [None, "model"]}
# ZeRO-1: w is replicated over data, so its moments take the data axis on dimension 0 (8 rows
# over 4 devices); b (4 entries) too; emb is split over model on dimension 0 and its
# dimension 1 (6) is not divisible by the 4 data devices, so it stays as it is.
ZERO1_SPECS = {"['b']": ["data"], "['emb']": ["model"], "['w']": ["data", "model"]}


@pytest.fixture(scope="module")
def observed():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_run_sees_eight_devices_and_this_process_does_not(observed):
    assert observed["device_count"] == 8
    assert jax.device_count() == 1


@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_state_and_updates_keep_the_params_sharding(observed, axes):
    r = observed[axes]
    assert r["params"] == PARAM_SPECS
    for key in ("eager_state_mu", "eager_state_nu", "eager_updates", "jit_state_mu",
                "jit_updates", "follow_init_mu", "follow_state_mu", "follow_state_nu",
                "follow_updates", "follow_params"):
        assert r[key] == PARAM_SPECS, key
    assert r["follow_count"] == {"": []}
    assert r["follow_w_mu_shard_shape"] == [8, 2]


@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_zero1_splits_the_state_over_the_data_axis(observed, axes):
    r = observed[axes]
    for key in ("zero1_init_mu", "zero1_state_mu", "zero1_state_nu"):
        assert r[key] == ZERO1_SPECS, key
    assert r["zero1_count"] == {"": []}
    # Each device holds a quarter of w's rows of the moments, and half of its columns.
    assert r["zero1_w_mu_shard_shape"] == [2, 2]
    # Params and updates stay as they were: replicated over data.
    assert r["zero1_updates"] == PARAM_SPECS
    assert r["zero1_params"] == PARAM_SPECS


@pytest.mark.parametrize("axes", ["explicit", "auto"])
def test_sharded_runs_equal_the_single_device_run(observed, axes):
    r = observed[axes]
    # Adam is elementwise: the same operations on each shard give the same bits.
    assert r["follow_bitwise_equal_to_single_device"]
    assert r["follow_max_abs_diff"] == 0.0
    if axes == "auto":
        assert r["zero1_bitwise_equal_to_single_device"]
    # With explicit axes the compiler fuses the resharded step differently: one float32
    # rounding of the O(1) params and moments at most.
    assert r["zero1_max_abs_diff"] <= 2.4e-7


def test_data_parallel_training_with_zero1_equals_one_device(observed):
    r = observed["train"]
    assert r["state_mu"] == {"['b']": ["data"], "['emb']": ["data"], "['w']": ["data"]}
    assert r["params"] == {"['b']": [], "['emb']": [], "['w']": []}
    # The loss sums over a batch split across devices: the gradient's reduction order differs.
    assert r["max_abs_diff"] <= 1e-6 * r["max_abs_param"]


# -- in this process: one device is a mesh of one ---------------------------------------------


def test_state_shardings_needs_a_mesh_and_names_a_missing_axis():
    params = {"w": jnp.ones((4, 2))}
    with pytest.raises(ValueError, match="no leaf of params has a NamedSharding"):
        state_shardings(gx.adam(1e-3), params)
    mesh = jax.make_mesh((1,), ("data",))
    placed = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    with pytest.raises(ValueError, match="data_axis 'batch' is not an axis of the params' mesh"):
        state_shardings(gx.adam(1e-3), placed, data_axis="batch")


def test_state_shardings_has_the_state_structure_and_follows_paths():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    params = {"dense": {"w": jnp.ones((4, 2))}, "w": jnp.ones((4, 2))}
    placed = {
        "dense": {"w": jax.device_put(params["dense"]["w"],
                                      NamedSharding(mesh, PartitionSpec("model")))},
        "w": jax.device_put(params["w"], NamedSharding(mesh, PartitionSpec(None, "model"))),
    }
    opt = gx.chain(gx.ema(0.9), gx.adam(1e-3))
    sh = state_shardings(opt, placed, data_axis="data")
    state = opt.init(placed)
    assert jax.tree.structure(sh) == jax.tree.structure(state)
    mu = sh[1][0].mu
    # The longest matching path wins: 'dense/w' is not laid out like 'w'.
    assert tuple(mu["dense"]["w"].spec) == ("model", "data")
    assert tuple(mu["w"].spec) == ("data", "model")
    assert tuple(sh[1][0].count.spec) == ()


# -- every public transformation, from abstract params (one pass in the 8-device run) ---------


def test_every_transformation_gets_a_sharding_for_every_state_leaf(observed):
    assert set(observed["cases"]) == set(CASES)
    for name, r in observed["cases"].items():
        for label in ("follow", "zero1"):
            assert r[f"{label}_named"], (name, label)
            assert r[f"{label}_scalars_replicated"], (name, label)
            assert r[f"{label}_bytes"] >= 0, (name, label)


# dense/w is (4, 3) split over model on its rows (axis 0). optax's convention averages the row
# statistic over the largest axis (0) and the column statistic over the other: the column
# statistic keeps axis 0. torch's averages the row statistic over the last axis: it keeps 0.
FACTORED_W = {
    "scale_by_factored_rms": {"v_row": [], "v_col": ["model"]},
    "scale_by_factored_rms_torch": {"v_row": ["model"], "v_col": []},
    "adafactor": {"v_row": [], "v_col": ["model"]},
}


@pytest.mark.parametrize("name", sorted(FACTORED_W))
def test_factored_statistics_follow_the_param_axis_they_keep(observed, name):
    specs = observed["declared"][name]
    prefix = "[0]" if name == "adafactor" else ""
    for field, spec in FACTORED_W[name].items():
        assert specs[f"{prefix}.{field}['dense']['w']"] == spec, field
    # The [0] placeholders of the full moment and of unfactored leaves are replicated.
    assert specs[f"{prefix}.v['dense']['w']"] == []
    assert all(v == [] for k, v in specs.items() if "['dense']['w']" not in k), specs


@pytest.mark.parametrize("name", ["scale_by_sm3", "sm3"])
def test_sm3_accumulators_follow_their_axis(observed, name):
    specs = observed["declared"][name]
    prefix = "[0]" if name == "sm3" else ""
    assert specs[f"{prefix}.mu['dense']['w'][0]"] == ["model"]   # the 4 rows
    assert specs[f"{prefix}.mu['dense']['w'][1]"] == []          # the 3 columns
    assert specs[f"{prefix}.nu['dense']['w']"] == ["model"]
    assert specs[f"{prefix}.count"] == []


def test_per_device_state_bytes(observed):
    m = observed["memory"]
    n = m["params_bytes"]
    # AdamW: two float32 moments per param and int32 step counts; every axis of the tree is
    # divisible by 8, so ZeRO-1 keeps exactly an eighth of the moments on each device.
    assert 2 * n < m["adamw"]["one_device"] <= 2 * n + 64
    assert m["adamw"]["zero1_8"] - 2 * n // 8 == m["adamw"]["one_device"] - 2 * n
    # Muon: one momentum per param, and Adam's second moment for the two vectors (512 and
    # 2048 entries), which are not orthogonalized.
    vectors = 4 * (512 + 2048)
    assert n + vectors < m["muon"]["one_device"] <= n + vectors + 64
    assert m["muon"]["zero1_8"] - (n + vectors) // 8 == m["muon"]["one_device"] - n - vectors
    # Adafactor: rows plus columns of each matrix, the full moment of the vectors.
    assert m["adafactor"]["one_device"] < n // 100
    assert m["adafactor"]["zero1_8"] < m["adafactor"]["one_device"] // 4


# -- in this process: which statistic follows which axis, from the numbers ------------------


def _one_update(opt, spec):
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    params = {"w": jax.device_put(jnp.ones((4, 4)), NamedSharding(mesh, spec))}
    # g varies along axis 0 only: a statistic that keeps axis 0 varies, one that averages
    # over it is constant.
    grads = {"w": jnp.broadcast_to(jnp.arange(1.0, 5.0)[:, None], (4, 4))}
    _, state = opt.update(grads, opt.init(params), params)
    return state, state_shardings(opt, params)


@pytest.mark.parametrize("convention", ["optax", "torch"])
def test_square_factored_statistics_follow_the_axis_their_numbers_vary_along(convention):
    opt = gx.scale_by_factored_rms(min_dim_size_to_factor=2, convention=convention,
                                   epsilon=None if convention == "torch" else 1e-30)
    state, sh = _one_update(opt, PartitionSpec("model", None))
    for field in ("v_row", "v_col"):
        values = np.asarray(getattr(state, field)["w"])
        keeps_axis_0 = np.ptp(values) > 0
        assert tuple(getattr(sh, field)["w"].spec) == (("model",) if keeps_axis_0 else (None,))


def test_sm3_accumulators_follow_the_axis_their_numbers_vary_along():
    state, sh = _one_update(gx.scale_by_sm3(), PartitionSpec(None, "model"))
    for a in (0, 1):
        keeps_axis_1 = np.ptp(np.asarray(state.mu["w"][a])) == 0   # constant: not axis 0
        assert tuple(sh.mu["w"][a].spec) == (("model",) if keeps_axis_1 else (None,))
