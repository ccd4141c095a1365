"""Measurements of the updates kept in the state for logging (optax's monitoring wrappers).

`snapshot` keeps one measurement of the last updates; `monitor` runs several measures, each a
function of the updates or a transformation whose output is the measurement (`measure_with_ema`
is one: an EMA of a measurement), and passes the updates through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from gradxform._src.primitives.functions import stateless
from gradxform._src.primitives.moments import ema
from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, hyperparameter, in_interval, static
from gradxform._src.protocol.schedule import ScalarOrSchedule
from gradxform._src.protocol.transformation import Transformation, is_transformation


class SnapshotState(NamedTuple):
    """`measurement`: `{measure_name: measure(updates)}` of the last update (of the params at
    init)."""

    measurement: Any


@pytree_dataclass(positional=2)
class snapshot(Transformation):
    """Keeps `measure(updates)` in the state and passes the updates through: u_t = g_t.

    Args:
      measure_name: the key of the measurement in `state.measurement`.
      measure: `fn(updates) -> tree`, e.g. `optax.tree.norm` or `global_norm`.

    Returns:
      A transformation with state `SnapshotState({measure_name: measure(updates)})`.

    References:
      optax.snapshot.
    """

    measure_name: str = static()
    measure: Callable = static()

    def init(self, params):
        return SnapshotState({self.measure_name: self.measure(params)})

    def update(self, updates, state, params=None, **extra_args):
        return updates, SnapshotState({self.measure_name: self.measure(updates)})


class _UpdatesOnly:
    """`fn(updates, params) -> measure(updates)`, compared and hashed by `measure`."""

    __slots__ = ("measure",)

    def __init__(self, measure: Callable):
        self.measure = measure

    def __call__(self, updates, params):
        return self.measure(updates)

    def __eq__(self, other):
        return type(other) is type(self) and other.measure == self.measure

    def __hash__(self):
        return hash(self.measure)

    def __repr__(self):
        return getattr(self.measure, "__name__", repr(self.measure))


class MonitorState(NamedTuple):
    """`measurements`: `{name: measurement}` of the last update (zeros of their shapes at init);
    `measure_states`: the states of the measures that are transformations, in order."""

    measurements: Any
    measure_states: Any


@pytree_dataclass
class monitor(Transformation):
    """Measures the updates with several measures and passes them through: u_t = g_t.

    A measure is a function of the updates, or a transformation whose output is the
    measurement (`measure_with_ema(global_norm, 0.9)`); each measurement goes to
    `state.measurements[name]`. At init the measurements are zeros of their shapes, so the
    state keeps one structure across steps (optax starts from an empty dict, which a
    `lax.scan` carry cannot hold).

    Args:
      measures: a mapping from name to measure.

    Returns:
      A transformation with state `MonitorState(measurements, measure_states)`.

    References:
      optax.monitor.
    """

    measures: Any = child()

    def __post_init__(self):
        if not isinstance(self.measures, Mapping) or not self.measures:
            raise TypeError(f"monitor: measures must be a non-empty mapping from name to a "
                            f"function of the updates or a transformation, got {self.measures!r}")
        object.__setattr__(self, "measures", {
            name: m if is_transformation(m) else stateless(_UpdatesOnly(m))
            for name, m in self.measures.items()
        })
        super().__post_init__()

    def init(self, params):
        states = tuple(m.init(params) for m in self.measures.values())
        shapes = jax.eval_shape(
            lambda p, s: self._measure(p, s, p, {})[0], params, states)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        return MonitorState(measurements=zeros, measure_states=states)

    def _measure(self, updates, states, params, extra_args):
        measurements, new_states = {}, []
        for (name, m), s in zip(self.measures.items(), states, strict=True):
            measurements[name], s = m.update(updates, s, params, **extra_args)
            new_states.append(s)
        return measurements, tuple(new_states)

    def update(self, updates, state, params=None, **extra_args):
        measurements, states = self._measure(updates, state.measure_states, params, extra_args)
        return updates, MonitorState(measurements=measurements, measure_states=states)


@pytree_dataclass(positional=4)
class measure_with_ema(Transformation):
    """A measure for `monitor`: the EMA of a measurement of the updates.

        m_t = measure(g_t),   v_t = β v_{t-1} + (1 - β) m_t,   output v_t / (1 - β^t) (debias)

    Its output is the average, not the updates: use it as a measure of `monitor`.

    Args:
      measure: `fn(updates) -> tree`.
      decay: β in [0, 1).
      debias: divide by 1 - β^t.
      accumulator_dtype: dtype of v (default: the measurement's).

    Returns:
      A transformation with `ema`'s state for the measurement.

    References:
      optax.measure_with_ema.
    """

    measure: Callable = static()
    decay: ScalarOrSchedule = hyperparameter(check=in_interval(0, 1, "[)"))
    debias: bool = static(True)
    accumulator_dtype: DTypeLike | None = static(None)

    def _ema(self) -> ema:
        return ema(self.decay, self.debias, self.accumulator_dtype)

    def init(self, params):
        return self._ema().init(self.measure(params))

    def update(self, updates, state, params=None, **extra_args):
        return self._ema().update(self.measure(updates), state)
