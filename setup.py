"""The extension definition and its compile flags; metadata lives in pyproject.toml.

Build options come from environment variables, which survive pip's build
isolation where command-line options do not:

  SWARMHEAP_DEBUG=1       keep assert() (-UNDEBUG), the core's invariant checks
                          (SH_DEBUG=2, see csrc/sh_debug.h), and build with -O0 -g
  SWARMHEAP_TESTING=1     compile in the test hooks (csrc/sh_testing.h): crash tests
  SWARMHEAP_SANITIZE=...  e.g. address,undefined: compile with -fsanitize=...
  SWARMHEAP_WERROR=1      treat warnings as errors (CI sets it)
"""

import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

core_sources = sorted(glob.glob("csrc/*.c"))
core_headers = sorted(glob.glob("csrc/*.h"))

# hidden visibility: the core's calls to itself go direct, not through the
# PLT (only PyInit__core, marked by Python, is exported)
compile_args = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wno-unused-function", "-fvisibility=hidden"]
link_args: list[str] = []
if os.environ.get("SWARMHEAP_DEBUG"):
    compile_args += ["-O0", "-g", "-UNDEBUG", "-DSH_DEBUG=2"]
else:
    compile_args += ["-O2"]
if os.environ.get("SWARMHEAP_TESTING"):
    compile_args += ["-DSH_TESTING"]
if os.environ.get("SWARMHEAP_WERROR"):
    compile_args += ["-Werror"]
sanitize = os.environ.get("SWARMHEAP_SANITIZE")
if sanitize:
    compile_args += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    link_args += [f"-fsanitize={sanitize}"]

extension = Extension(
    "swarmheap._core",
    sources=["src/swarmheap/_core.pyx", "src/swarmheap/np_handler.c", *core_sources],
    depends=[
        *core_headers,
        "src/swarmheap/_core.pxd",
        *sorted(glob.glob("src/swarmheap/*.pxi")),
        *sorted(glob.glob("src/swarmheap/includes/*.pxd")),
        "src/swarmheap/np_handler.h",
    ],
    include_dirs=["csrc", "src/swarmheap", numpy.get_include()],
    # NumPy 2.x targets the oldest C API it supports unless told: the NEP 49
    # handler calls (PyDataMem_SetHandler) need 1.22, and without this the
    # extension builds with an implicit declaration and fails to import
    define_macros=[
        ("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION"),
        ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION"),
    ],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    # librt: shm_open lives there before glibc 2.34 (manylinux_2_28 is 2.28)
    libraries=["m", "pthread", "rt"],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            # methods as method descriptors, which check their self: a cyfunction
            # called through the class with another object (Heap.unlink("name"))
            # read that object as a heap
            "binding": False,
        },
    ),
)
