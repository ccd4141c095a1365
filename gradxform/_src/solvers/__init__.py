"""Implementation of gradxform; import the public names from `gradxform`."""
