"""The tree check: where it is added, that only the outermost update runs it, its messages."""

import jax
import jax.numpy as jnp
import pytest

import gradxform as gx
from gradxform._src.protocol import tree_check


@gx.pytree_dataclass
class double(gx.Transformation):
    factor: float = gx.hyperparameter(2.0)

    def init(self, params):
        return gx.EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(lambda g: self.factor * g, updates), state


def test_pytree_dataclass_wraps_update_defined_or_inherited():
    assert getattr(double.update, "checks_trees", False)
    assert getattr(gx.chain.update, "checks_trees", False)
    assert getattr(gx.scale_by_adam.update, "checks_trees", False)  # inherited from Elementwise
    assert double.update.__wrapped__.__name__ == "update"
    assert not getattr(gx.Transformation.update, "checks_trees", False)


def test_only_the_outermost_update_checks(monkeypatch):
    calls = []
    original = tree_check.check_trees
    monkeypatch.setattr(tree_check, "check_trees",
                        lambda t, *a: calls.append(type(t).__name__) or original(t, *a))
    opt = gx.chain(double(), gx.chain(double(), gx.scale_by_adam()), gx.scale(-0.1))
    params = {"w": jnp.ones(3)}
    opt.update(params, opt.init(params), params)
    assert calls == ["chain"]
    calls.clear()
    opt.update(params, opt.init(params), params)  # a second step checks again, once
    assert calls == ["chain"]


def test_the_check_is_reset_after_an_error():
    opt = gx.chain(double(), gx.scale(-0.1))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="state does not match"):
        opt.update(params, (gx.EmptyState(),), params)
    # After the failure, inner updates called on their own check their trees again.
    with pytest.raises(ValueError, match="updates has key 'b' that params lacks"):
        double().update({"w": jnp.ones(3), "b": jnp.ones(1)}, gx.EmptyState(), params)


def test_stale_state_names_the_first_differing_path():
    opt = gx.adam(1e-3)
    state = opt.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"chain.update: state does not match the state that "
                                         r"init gives .*'0/mu/b' is in the state init gives but "
                                         r"not in this state"):
        opt.update({"w": jnp.ones(3), "b": jnp.ones(2)}, state)
