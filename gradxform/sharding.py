"""Placing optimizer state on a device mesh (and splitting it over a data axis, ZeRO-1)."""

from gradxform._src.interop.sharding import state_shardings

__all__ = ["state_shardings"]
