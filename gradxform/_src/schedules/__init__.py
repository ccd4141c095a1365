"""Schedules: maps from the step count to a hyperparameter's value (see gradxform.schedules)."""
