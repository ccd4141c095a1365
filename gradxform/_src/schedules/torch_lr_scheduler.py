"""torch.optim.lr_scheduler's forms that no optax schedule computes: OneCycleLR with its
phase boundaries and momentum cycling, CosineAnnealingLR past T_max, and ChainedScheduler's
product of schedules; and the step sizes torch's ASGD and Adafactor compute inside the
optimizer."""

from __future__ import annotations

import numbers

import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import child, in_interval, non_negative, positive, static
from gradxform._src.protocol.schedule import Schedule
from gradxform._src.schedules.common import (
    ScheduleBase,
    as_float,
    one_of,
    require,
    safe_divisor,
    steps,
    value,
)
from gradxform._src.schedules.piecewise import as_schedule

_anneal = one_of("cos", "linear")


def _interpolate(start, end, pct, strategy: str):
    """torch's `_annealing_cos` and `_annealing_linear`: start at pct = 0, end at pct = 1."""
    if strategy == "cos":
        return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)
    return (end - start) * pct + start


def _phases(count, total_steps, pct_start, three_phase: bool, strategy: str, points):
    """OneCycleLR's phases: the value at each step from the phase values `points`.

    Phase k runs from step e_{k-1} (e_{-1} = 0) to e_k, e = (p T - 1, T - 1), or with three
    phases (p T - 1, 2 p T - 2, T - 1), and goes from points[k] to points[k + 1]; a step
    belongs to the first phase whose end it has not passed (torch's `step_num <= end_step`).
    """
    t = as_float(count)
    plain = all(isinstance(x, numbers.Real) for x in (total_steps, pct_start))
    # torch's ends are float64 numbers: computed so when the arguments are Python numbers
    total = float(total_steps) if plain else as_float(total_steps)
    if three_phase:
        ends = [pct_start * total - 1, 2 * pct_start * total - 2, total - 1]
    else:
        ends = [pct_start * total - 1, total - 1]
    starts = [0.0, *ends[:-1]]
    out = None
    # from the last phase to the first, so that the first phase whose end is not passed wins
    for k in reversed(range(len(ends))):
        span = ends[k] - starts[k]
        span = jnp.where(jnp.asarray(span) == 0, 1.0, span)
        pct = jnp.clip((t - starts[k]) / span, 0.0, 1.0)
        v = _interpolate(points[k], points[k + 1], pct, strategy)
        out = v if out is None else jnp.where(t <= ends[k], v, out)
    return out


@pytree_dataclass(positional=2)
class onecycle_lr_schedule(ScheduleBase):
    """The one-cycle learning rate exactly as torch's OneCycleLR computes it.

        η_init = max_lr / div_factor,   η_min = η_init / final_div_factor
        two phases:   η_init → max_lr over steps [0, p T - 1],  max_lr → η_min over [p T - 1, T - 1]
        three phases: η_init → max_lr over [0, p T - 1],  max_lr → η_init over [p T - 1,
                      2 p T - 2],  η_init → η_min over [2 p T - 2, T - 1]

    each phase a half cosine (1 + cos(π x)) / 2 ("cos") or a line ("linear") in its fraction x.
    The phase ends p T - 1 are torch's (they need not be whole steps); optax's
    `cosine_onecycle_schedule` puts them elsewhere (at p T) and has no third phase. Held at η_min
    after step T - 1 (torch raises there). `onecycle_schedules` gives the momentum that goes
    with it.

    Args:
      max_lr: the peak learning rate.
      total_steps: T > 0.
      pct_start: p in [0, 1], the fraction of the steps spent rising (0.3).
      anneal_strategy: "cos" or "linear".
      div_factor: η_init = max_lr / div_factor (25).
      final_div_factor: η_min = η_init / final_div_factor (1e4).
      three_phase: come back down to η_init before the final anneal (fast.ai's schedule).

    Returns:
      A schedule of the step count.

    References:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
      Learning Rates", 2017, arXiv:1708.07120. torch.optim.lr_scheduler.OneCycleLR.
    """

    max_lr: float = value()
    total_steps: int = steps(positive=True)
    pct_start: float = value(0.3, check=in_interval(0, 1, "[]"))
    anneal_strategy: str = static("cos", check=_anneal)
    div_factor: float = value(25.0, check=positive)
    final_div_factor: float = value(1e4, check=positive)
    three_phase: bool = static(False)

    def __call__(self, count):
        initial = self.max_lr / self.div_factor
        low = initial / self.final_div_factor
        points = ((initial, self.max_lr, initial, low) if self.three_phase
                  else (initial, self.max_lr, low))
        return _phases(count, self.total_steps, self.pct_start, self.three_phase,
                       self.anneal_strategy, points)


@pytree_dataclass(positional=1)
class onecycle_momentum_schedule(ScheduleBase):
    """The momentum OneCycleLR cycles against its learning rate (`cycle_momentum=True`).

        two phases:   max_momentum → base_momentum, then back to max_momentum
        three phases: max → base, base → max, then held at max_momentum

    on the phases of `onecycle_lr_schedule` (same `total_steps`, `pct_start`,
    `anneal_strategy`, `three_phase`). Give it as SGD's `momentum` or Adam's `b1`.

    Args:
      total_steps: T > 0.
      pct_start: p in [0, 1].
      anneal_strategy: "cos" or "linear".
      base_momentum: the momentum at the learning rate's peak (0.85).
      max_momentum: the momentum at the start and the end (0.95).
      three_phase: as in `onecycle_lr_schedule`.

    Returns:
      A schedule of the step count.
    """

    total_steps: int = steps(positive=True)
    pct_start: float = value(0.3, check=in_interval(0, 1, "[]"))
    anneal_strategy: str = static("cos", check=_anneal)
    base_momentum: float = value(0.85)
    max_momentum: float = value(0.95)
    three_phase: bool = static(False)

    def __call__(self, count):
        hi, lo = self.max_momentum, self.base_momentum
        points = (hi, lo, hi, hi) if self.three_phase else (hi, lo, hi)
        return _phases(count, self.total_steps, self.pct_start, self.three_phase,
                       self.anneal_strategy, points)


def onecycle_schedules(max_lr: float, total_steps: int, *, pct_start: float = 0.3,
                       anneal_strategy: str = "cos", cycle_momentum: bool = True,
                       base_momentum: float = 0.85, max_momentum: float = 0.95,
                       div_factor: float = 25.0, final_div_factor: float = 1e4,
                       three_phase: bool = False
                       ) -> tuple[onecycle_lr_schedule, onecycle_momentum_schedule | None]:
    """torch's OneCycleLR in one call: (learning rate, momentum) schedules, torch's arguments.

        lr, momentum = onecycle_schedules(0.1, 1000)
        opt = sgd(lr, momentum)                   # or adam(lr, b1=momentum)

    The momentum is None with `cycle_momentum=False` (then the optimizer keeps its own).

    Returns:
      (`onecycle_lr_schedule(...)`, `onecycle_momentum_schedule(...)` or None).
    """
    lr = onecycle_lr_schedule(max_lr, total_steps, pct_start=pct_start,
                              anneal_strategy=anneal_strategy, div_factor=div_factor,
                              final_div_factor=final_div_factor, three_phase=three_phase)
    if not cycle_momentum:
        return lr, None
    return lr, onecycle_momentum_schedule(
        total_steps, pct_start=pct_start, anneal_strategy=anneal_strategy,
        base_momentum=base_momentum, max_momentum=max_momentum, three_phase=three_phase)


@pytree_dataclass(positional=2)
class periodic_cosine_annealing_schedule(ScheduleBase):
    """CosineAnnealingLR as torch computes it, rising again after T_max: a cosine of period
    2 T_max.

        η_t = η_min + (η_0 - η_min) (1 + cos(π t / T_max)) / 2      for every t

    torch's recursive update equals this closed form at every step, so past T_max the rate
    climbs back to η_0 at 2 T_max, and so on. For a decay that stays at η_min after T_max use
    `cosine_decay_schedule(η_0, T_max, alpha=η_min / η_0)`; for restarts,
    `cosine_annealing_warm_restarts_schedule`.

    Args:
      init_value: η_0, torch's base lr.
      T_max: the half period > 0.
      eta_min: η_min.

    Returns:
      A schedule of the step count.

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
      torch.optim.lr_scheduler.CosineAnnealingLR.
    """

    init_value: float = value()
    T_max: int = steps(positive=True)
    eta_min: float = value(0.0)

    def __call__(self, count):
        # t mod 2 T_max first: cos(π t / T) of a huge float32 t loses its phase
        t = jnp.asarray(count) % (2 * jnp.asarray(self.T_max))
        x = as_float(t) / safe_divisor(as_float(self.T_max))
        return self.eta_min + (self.init_value - self.eta_min) * (1 + jnp.cos(jnp.pi * x)) / 2


@pytree_dataclass(positional=0)
class multiply_schedules(ScheduleBase):
    """The product of schedules: η_t = Π_k S_k(t) (torch's ChainedScheduler).

    torch's ChainedScheduler steps its schedulers one after the other on the same learning
    rate; for schedulers that multiply it (ExponentialLR, StepLR, MultiStepLR, ConstantLR,
    LinearLR, MultiplicativeLR, PolynomialLR) the result is the base lr times each one's
    factor: `multiply_schedules(S_1, S_2)` with S_1 giving the base lr times its factor and S_2
    its factor alone (init_value 1.0).

    Args:
      *schedules: S_1, ..., S_K: schedules, Python functions of the step count or constants.

    Returns:
      A schedule of the step count.
    """

    schedules: tuple = child()

    def __init__(self, *schedules: Schedule | float):
        object.__setattr__(self, "schedules", tuple(as_schedule(s) for s in schedules))
        self.__post_init__()

    def _validate(self):
        require("multiply_schedules", len(self.schedules) > 0,
                "needs at least one schedule")

    def __call__(self, count):
        out = self.schedules[0](count)
        for s in self.schedules[1:]:
            out = out * s(count)
        return out

    def __repr__(self) -> str:
        return f"multiply_schedules({', '.join(repr(s) for s in self.schedules)})"


@pytree_dataclass(positional=1)
class asgd_schedule(ScheduleBase):
    """ASGD's decaying step size: η_t = η_0 / (1 + λ η_0 t)^α (torch.optim.ASGD's eta).

    Args:
      learning_rate: η_0 ≥ 0.
      lambd: λ ≥ 0 (1e-4).
      alpha: α ≥ 0 (0.75).

    Returns:
      A schedule of the step count.

    References:
      Bottou, "Stochastic Gradient Descent Tricks", Neural Networks: Tricks of the Trade, 2012.
    """

    learning_rate: float = value(check=non_negative)
    lambd: float = value(1e-4, check=non_negative)
    alpha: float = value(0.75, check=non_negative)

    def __call__(self, count):
        t = as_float(count)
        return self.learning_rate / (1 + self.lambd * self.learning_rate * t) ** self.alpha


@pytree_dataclass(positional=1)
class relative_step_schedule(ScheduleBase):
    """Adafactor's relative step size: ρ_t = min(η, 1/√t), t = count + 1.

    The paper's ρ_t = min(10⁻², 1/√t) is `relative_step_schedule(1e-2)`; torch.optim.Adafactor
    uses min(lr, 1/√t). Give it as `adafactor`'s learning rate.

    Args:
      learning_rate: η ≥ 0, the largest step.

    Returns:
      A schedule of the step count.

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018, §8.
    """

    learning_rate: float = value(check=non_negative)

    def __call__(self, count):
        return jnp.minimum(self.learning_rate, 1 / jnp.sqrt(as_float(count) + 1))
