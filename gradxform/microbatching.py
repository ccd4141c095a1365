"""Microbatching, with the names and numbers of `optax.microbatching`: a function of a batch
evaluated one microbatch at a time, the outputs accumulated."""

from gradxform._src.composition.microbatching import (
    AccumulationType,
    Accumulator,
    Aux,
    micro_grad,
    micro_vmap,
    microbatch,
    reshape_batch_axis,
)

__all__ = [
    "AccumulationType",
    "Accumulator",
    "Aux",
    "micro_grad",
    "micro_vmap",
    "microbatch",
    "reshape_batch_axis",
]
