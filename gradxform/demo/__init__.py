"""`python -m gradxform demo`: the experiments of the notebooks from the command line."""
