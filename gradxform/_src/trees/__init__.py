"""Arithmetic on pytrees, optimizer states by name, projections (see gradxform.tree_utils)."""
