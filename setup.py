"""Builds the compiled twins: ``drengr.mapping._mapping_c`` (C++ over simdjson), ``drengr._index`` and
``drengr._measures``.

pysimdjson installs ``simdjson.h`` and ``simdjson.cpp`` beside its module; we
compile simdjson.cpp into our extension so the Cython code can walk simdjson's
DOM directly (``_simdjson.pxd`` declares it; the C++ helpers are in
``_helpers.hpp``). Everything else is in pyproject.toml.

``DRENGR_NO_EXTENSIONS=1`` builds neither: the pure-Python twins serve (and at
run time it makes ``drengr.mapping`` ignore a built module).
"""

import os

import simdjson
from Cython.Build import cythonize
from setuptools import Extension, setup

SIMDJSON_DIR = os.path.dirname(simdjson.__file__)
SITE_DIR = os.path.dirname(SIMDJSON_DIR)
MAPPING_DIR = os.path.join("src", "drengr", "mapping")

mapping = Extension(
    "drengr.mapping._mapping_c",
    sources=[os.path.join(MAPPING_DIR, "_mapping_c.pyx"), os.path.join(SIMDJSON_DIR, "simdjson.cpp")],
    include_dirs=[MAPPING_DIR, SIMDJSON_DIR],
    depends=[os.path.join(MAPPING_DIR, "_helpers.hpp"), os.path.join(MAPPING_DIR, "_simdjson.pxd")],
    language="c++",
    extra_compile_args=["-std=c++17", "-O3", "-DNDEBUG"],
)

index = Extension(
    "drengr._index",
    sources=["src/drengr/_index.pyx"],
    extra_compile_args=["-O3"],
)

measures = Extension(
    "drengr._measures",
    sources=["src/drengr/_measures.pyx"],
    extra_compile_args=["-O3"],
)

if os.environ.get("DRENGR_NO_EXTENSIONS"):
    ext_modules = []
else:
    ext_modules = cythonize(
        [mapping, index, measures],
        include_path=[SITE_DIR],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
    )

setup(ext_modules=ext_modules)
