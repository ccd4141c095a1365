"""Bounded caches and gradxform.clear_caches()."""

import jax
import jax.numpy as jnp
import pytest

import gradxform as gx
from gradxform._src.fast import kernel
from gradxform._src.fast import step as step_module
from gradxform._src.protocol import tree_check
from gradxform._src.protocol.caches import LRUCache


def test_lru_cache_forgets_the_least_recently_used_entry():
    cache = LRUCache(maxsize=2)
    calls = []

    def compute(v):
        calls.append(v)
        return v * 10

    assert cache.get_or_compute("a", lambda: compute(1)) == 10
    assert cache.get_or_compute("b", lambda: compute(2)) == 20
    assert cache.get_or_compute("a", lambda: compute(99)) == 10  # hit: "a" is now the newest
    assert cache.get_or_compute("c", lambda: compute(3)) == 30  # evicts "b", the oldest
    assert len(cache) == 2 and "a" in cache and "c" in cache and "b" not in cache
    assert calls == [1, 2, 3]
    assert cache.get("b", "missing") == "missing"
    assert cache.setdefault("a", 0) == 10 and cache.setdefault("d", 4) == 4
    assert "c" not in cache  # "a" was used more recently than "c"


def test_clear_caches_empties_the_state_structure_and_compiled_step_caches():
    opt = gx.adam(1e-3)
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    state = opt.init(params)
    opt.update(params, state, params)
    step = gx.make_step(opt, donate=False)
    step(params, state, params)
    assert len(tree_check._state_structures) > 0
    assert step_module._compiled.cache_info().currsize > 0

    gx.clear_caches()
    assert len(tree_check._state_structures) == 0
    assert step_module._compiled.cache_info().currsize == 0
    assert len(kernel.programs_cache) == 0

    # Everything still works, and fills the caches again.
    new_params, _ = step(params, state, params)
    assert jax.tree.structure(new_params) == jax.tree.structure(params)
    opt.update(params, state, params)
    assert len(tree_check._state_structures) > 0


def test_caches_are_bounded(monkeypatch):
    assert step_module._compiled.cache_parameters()["maxsize"] is not None
    assert kernel.programs_cache.maxsize is not None
    assert tree_check._state_structures.maxsize is not None
    # The eviction at a small bound: the real one (1024) takes as many eval_shapes, ~45 s.
    bound = 8
    monkeypatch.setattr(tree_check._state_structures, "maxsize", bound)
    gx.clear_caches()
    opt = gx.sgd(0.1)
    for n in range(bound + 5):
        params = {"w": jnp.zeros((n + 1,))}
        tree_check.expected_state_structure(opt, params)
    assert len(tree_check._state_structures) == bound


def test_the_tree_check_still_names_the_stale_state_after_clearing():
    opt = gx.adam(1e-3)
    state = opt.init({"w": jnp.ones(3)})
    gx.clear_caches()
    with pytest.raises(ValueError, match="state does not match the state that init gives"):
        opt.update({"w": jnp.ones(4)}, state)
