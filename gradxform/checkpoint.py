"""Saving and restoring params, optimizer state and optimizers with orbax.

    from gradxform import checkpoint
    checkpoint.save(path, {"params": params, "opt_state": state, "optimizer": opt})
    restored = checkpoint.restore(path, like)
"""

from gradxform._src.interop.checkpoint import restore, save

__all__ = ["restore", "save"]
