"""The extension definition and its compile flags; metadata lives in pyproject.toml.

Build options come from environment variables, which survive pip's build
isolation where command-line options do not:

  SWARMHEAP_DEBUG=1       keep assert() (-UNDEBUG) and build with -O0 -g
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
    compile_args += ["-O0", "-g", "-UNDEBUG"]
else:
    compile_args += ["-O2"]
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
        "src/swarmheap/includes/core.pxd",
        "src/swarmheap/np_handler.h",
    ],
    include_dirs=["csrc", "src/swarmheap", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    libraries=["m", "pthread"],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
