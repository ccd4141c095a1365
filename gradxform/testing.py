"""The conformance check that every transformation passes; use it on your own transformations.

    from gradxform.testing import check_transformation
    check_transformation(my_transformation())
"""

from gradxform._src.protocol.conformance import check_transformation, default_params

__all__ = ["check_transformation", "default_params"]
