"""The learning rate of stochastic weight averaging: torch's SWALR anneal to a constant."""

from __future__ import annotations

import jax.numpy as jnp

from gradxform._src.protocol.dataclass import pytree_dataclass
from gradxform._src.protocol.fields import static
from gradxform._src.schedules.common import ScheduleBase, as_float, one_of, steps, value


@pytree_dataclass(positional=2)
class swa_lr_schedule(ScheduleBase):
    """Anneals from η_0 to the SWA learning rate in E steps, then holds it (torch's SWALR).

        x = min(1, t / E),   a(x) = (1 - cos πx) / 2  ("cos")  or  x  ("linear")
        η_t = a(x) η_swa + (1 - a(x)) η_0                  (E = 0: η_t = η_swa)

    t counts from the start of the averaging; torch's loop that calls `swa_scheduler.step()`
    after each step from step s on is `join_schedules([before, swa_lr_schedule(η_s, swa_lr,
    E)], [s])`, η_s the learning rate at step s. Pair it with `swa_params(s)`.

    Args:
      init_value: η_0, the learning rate when the averaging starts.
      swa_lr: η_swa, the learning rate held while averaging.
      anneal_epochs: E ≥ 0, the steps of the anneal (10).
      anneal_strategy: "cos" or "linear".

    Returns:
      A schedule of the step count.

    References:
      Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization",
      UAI 2018. torch.optim.swa_utils.SWALR.
    """

    init_value: float = value()
    swa_lr: float = value()
    anneal_epochs: int = steps(10)
    anneal_strategy: str = static("cos", check=one_of("cos", "linear"))

    def __call__(self, count):
        t = as_float(count)
        x = jnp.clip(t / jnp.maximum(self.anneal_epochs, 1), 0, 1)
        x = jnp.where(jnp.asarray(self.anneal_epochs) == 0, 1.0, x)
        a = (1 - jnp.cos(jnp.pi * x)) / 2 if self.anneal_strategy == "cos" else x
        return a * self.swa_lr + (1 - a) * self.init_value
