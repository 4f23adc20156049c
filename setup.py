"""Builds the C++ extension ``drengr._fast`` against the simdjson that pysimdjson ships.

pysimdjson installs ``simdjson.h``, ``simdjson.cpp`` and ``csimdjson.pxd``
beside its module; we compile simdjson.cpp into our extension so the Cython
code can walk simdjson's DOM directly. Everything else is in pyproject.toml.
"""

import os

import simdjson
from Cython.Build import cythonize
from setuptools import Extension, setup

SIMDJSON_DIR = os.path.dirname(simdjson.__file__)
SITE_DIR = os.path.dirname(SIMDJSON_DIR)

extension = Extension(
    "drengr._fast",
    sources=["src/drengr/_fast.pyx", os.path.join(SIMDJSON_DIR, "simdjson.cpp")],
    include_dirs=[SIMDJSON_DIR],
    language="c++",
    extra_compile_args=["-std=c++17", "-O3", "-DNDEBUG"],
)

index = Extension(
    "drengr._index",
    sources=["src/drengr/_index.pyx"],
    extra_compile_args=["-O3"],
)

setup(
    ext_modules=cythonize(
        [extension, index],
        include_path=[SITE_DIR],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    ),
)
