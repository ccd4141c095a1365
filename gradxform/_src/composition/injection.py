"""Hyperparameters kept in the state, where a training loop reads and sets them (optax's names).

gradxform keeps numeric hyperparameters as data of the transformation already (changing one
reuses the compiled step, `hyperparams(opt, state)` reads them); `inject_hyperparams` gives the
other place optax code expects them: `state.hyperparams["learning_rate"]`, settable between
steps. `multi_transform` and `scale_by_schedule` are optax's names for `partition` and a
scheduled `scale`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from gradxform._src.composition.partitioning import partition
from gradxform._src.primitives.scaling import scale
from gradxform._src.protocol.dataclass import format_value, pytree_dataclass
from gradxform._src.protocol.fields import constant, static
from gradxform._src.protocol.masks import StaticValue
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import (
    Transformation,
    adopt,
    safe_increment,
    zero_count,
)


class InjectHyperparamsState(NamedTuple):
    """`hyperparams`: the value of every numeric hyperparameter the last (or first) step used,
    by name; set one (`state.hyperparams["learning_rate"] = 1e-4`) to change the next step."""

    count: Any
    hyperparams: Any
    inner_state: Any


def _as_static(value):
    """`value` as hashable static data (a tree such as a mask is keyed by its leaves)."""
    try:
        hash(value)
        return value
    except TypeError:
        return StaticValue(value, StaticValue.tree_key(value))


def _unwrap(value):
    return value.value if isinstance(value, StaticValue) else value


def _convert_floats(x, dtype):
    """A floating point value (a Python float, a weakly typed array) in `dtype`; others as they
    are (optax's rule: a strongly typed array keeps its dtype, integers stay integers)."""
    if isinstance(x, jax.Array) and not getattr(x, "weak_type", False):
        return x
    current = x.dtype if hasattr(x, "dtype") else type(x)
    if jnp.issubdtype(current, jnp.floating):
        return jnp.asarray(x, dtype=dtype)
    return x


def _hyperparam_dtype(tree, dtype):
    """`dtype`, or the widest floating dtype of the leaves but at least float32: optax takes the
    leaves' widest, which for bfloat16 params rounds b2 = 0.999 to 1 and stalls Adam."""
    if dtype is not None:
        return jnp.dtype(dtype)
    dtypes = [jnp.dtype(jnp.result_type(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    widest = max(dtypes, key=lambda d: jnp.finfo(d).bits, default=jnp.dtype(jnp.float32))
    return widest if jnp.finfo(widest).bits >= 32 else jnp.dtype(jnp.float32)


@pytree_dataclass
class injected_hyperparams(Transformation):
    """`inner_factory(**hyperparameters)` with its numeric hyperparameters in the state; built by
    `inject_hyperparams(inner_factory)(...)` (see there)."""

    inner_factory: Callable = static()
    numeric: Any = constant()
    schedules: tuple = static(())
    others: tuple = static(())
    hyperparam_dtype: Any = static(None)

    def _inner(self, values: Mapping[str, Any]) -> Transformation:
        others = {name: _unwrap(v) for name, v in self.others}
        return adopt(self.inner_factory(**others, **values), "inject_hyperparams",
                     "the transformation inner_factory returns")

    def init(self, params):
        dtype = _hyperparam_dtype(params, self.hyperparam_dtype)
        count = zero_count()
        # Python numbers are kept weakly typed, as a number a loop sets later is: the compiled
        # step sees the same types after `state.hyperparams["learning_rate"] = 1e-4`.
        stored = {k: jnp.asarray(v) for k, v in self.numeric.items()}
        stored.update({k: _convert_floats(f(count), dtype) for k, f in self.schedules})
        values = {k: _convert_floats(v, dtype) for k, v in stored.items()}
        return InjectHyperparamsState(count=count, hyperparams=stored,
                                      inner_state=self._inner(values).init(params))

    def update(self, updates, state, params=None, **extra_args):
        dtype = _hyperparam_dtype(params if params is not None else updates, self.hyperparam_dtype)
        stored = {k: jnp.asarray(v) for k, v in state.hyperparams.items()}
        stored.update({k: _convert_floats(f(state.count), dtype) for k, f in self.schedules})
        values = {k: _convert_floats(v, dtype) for k, v in stored.items()}
        updates, inner_state = self._inner(values).update(updates, state.inner_state, params,
                                                          **extra_args)
        return updates, InjectHyperparamsState(count=safe_increment(state.count),
                                               hyperparams=stored, inner_state=inner_state)

    def hyperparams(self, state) -> dict:
        """The values in `state.hyperparams` (those the last step used)."""
        return dict(state.hyperparams)

    def _substates(self, state):
        inner = self._inner(state.hyperparams)
        return [(type(inner).__name__, inner, state.inner_state)]

    def __repr__(self) -> str:
        given = [*self.numeric.items(), *self.schedules, *self.others]
        args = ", ".join(f"{k}={format_value(_unwrap(v))}" for k, v in given)
        name = getattr(self.inner_factory, "__name__", repr(self.inner_factory))
        return f"inject_hyperparams({name})({args})"


def inject_hyperparams(inner_factory: Callable[..., Any],
                       static_args: str | Iterable[str] = (),
                       hyperparam_dtype: DTypeLike | None = None
                       ) -> Callable[..., injected_hyperparams]:
    """Wraps an optimizer factory so that its numeric hyperparameters live in the state.

        opt = inject_hyperparams(adam)(learning_rate=1e-3)
        state = opt.init(params)
        state.hyperparams["learning_rate"] = 1e-4      # the next update uses 1e-4

    The arguments given to the returned factory are sorted as optax sorts them: numbers (and
    arrays) go to `state.hyperparams`, where a training loop reads and sets them between steps
    without recompiling the step; callables are schedules, evaluated at the step count before
    every update and stored there too (setting a scheduled value has no effect); bools,
    `static_args` and anything else are fixed. Every update builds `inner_factory(**values)`
    with the current values and steps it, so the numbers are those of `inner_factory` called with
    the same values. Works for gradxform factories and optax ones alike.

    gradxform transformations keep their hyperparameters as data already (`hyperparams(opt,
    state)` reads them, and a new optimizer with other values reuses the compiled step); use
    this where code expects them in the state, as optax's `inject_hyperparams` keeps them.

    Args:
      inner_factory: a function returning a transformation, e.g. `adam`.
      static_args: names of arguments that are callables but not schedules (a mask function).
      hyperparam_dtype: dtype of the floating point hyperparameters (default: the widest dtype
        of the params, but at least float32; optax takes the params' widest, bfloat16 for
        bfloat16 params, in which b2 = 0.999 rounds to 1).

    Returns:
      A function with `inner_factory`'s arguments returning a transformation with state
      `InjectHyperparamsState(count, hyperparams, inner_state)`.

    References:
      optax.inject_hyperparams.
    """
    static_names = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static_names - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"inject_hyperparams: static_args must name parameters of inner_factory; "
            f"{sorted(unknown)} are not among {list(signature.parameters)}"
        )

    def factory(*args: Any, **kwargs: Any) -> injected_hyperparams:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        numeric: dict[str, Any] = {}
        schedules: list[tuple[str, Hashable]] = []
        others: list[tuple[str, Hashable]] = []
        for name, value in bound.arguments.items():
            if name in static_names or isinstance(value, bool):
                others.append((name, _as_static(value)))
            elif callable(value):
                schedules.append((name, value))
            elif isinstance(value, int | float | jax.Array | np.ndarray):
                numeric[name] = value
            else:
                others.append((name, _as_static(value)))
        return injected_hyperparams(inner_factory, numeric=numeric, schedules=tuple(schedules),
                                    others=tuple(others), hyperparam_dtype=hyperparam_dtype)

    factory.__name__ = f"inject_hyperparams({getattr(inner_factory, '__name__', 'factory')})"
    factory.__doc__ = inner_factory.__doc__
    return factory


def multi_transform(transforms: Mapping[Hashable, Transformation], param_labels: Any, *,
                    mask_compatible_extra_args: bool = False) -> partition:
    """optax's former name of `partition`: a transformation per group of params.

    Returns:
      `partition(transforms, param_labels, mask_compatible_extra_args=...)`.

    References:
      optax.multi_transform.
    """
    return partition(transforms, param_labels,
                     mask_compatible_extra_args=mask_compatible_extra_args)


def scale_by_schedule(step_size_fn: ScalarOrSchedule) -> scale:
    """Scales the updates by a schedule of the step count: u_t = α(t) g_t (optax's name).

    Args:
      step_size_fn: α, a schedule (any callable of the step count).

    Returns:
      `scale(step_size_fn)`, whose state counts the steps.

    References:
      optax.scale_by_schedule.
    """
    return scale(step_size_fn)
