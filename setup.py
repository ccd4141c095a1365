"""Build of gradxform's optional native kernel (the rest of the package is in pyproject.toml).

The kernel is a CPython extension holding an XLA FFI handler (gradxform/_src/fast/
vector_kernel.c). It needs a C compiler and Python's headers, not jaxlib: the one XLA header
it uses is vendored in gradxform/_src/fast/include. `optional=True`: without a compiler the
install still succeeds, and make_step runs the programs XLA compiles.
"""

import sys

from setuptools import Extension, setup

# -O3 for the vectorizer; no errno from sqrtf, so its loops vectorize; -ffp-contract=off so
# that a*b + c is two roundings, as numpy computes it. The CPU's vector width is chosen at run
# time (target_clones in the source), never -march=native.
flags = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-fno-math-errno",
                                             "-ffp-contract=off"]

setup(
    ext_modules=[
        Extension(
            "gradxform._src.fast.vector_kernel",
            sources=["gradxform/_src/fast/vector_kernel.c"],
            include_dirs=["gradxform/_src/fast/include"],
            extra_compile_args=flags,
            optional=True,
        )
    ]
)
