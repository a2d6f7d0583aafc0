"""Only the native extension modules; all metadata lives in pyproject.toml.

CONNSCAN_REQUIRE_EXTENSION=1 makes a failed native build an error (CI sets it);
CONNSCAN_NO_EXTENSIONS=1 skips the build entirely (pure-Python twins only).
CONNSCAN_BUILD_ONLY=_engine_c,_mmdb_c restricts a development build to some modules.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["_engine_c", "_mmdb_c", "_proc_c", "_flowparse_c", "_render_c"]


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """Build the extensions, but fall back to pure Python unless required."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure
            self._fail(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _fail(self, exc):
        if _flag("CONNSCAN_REQUIRE_EXTENSION"):
            raise
        print(f"connscan: native build failed ({exc}); using the pure-Python twins", file=sys.stderr)


def extensions():
    if _flag("CONNSCAN_NO_EXTENSIONS"):
        return []
    import numpy
    from Cython.Build import cythonize

    only = [m for m in os.environ.get("CONNSCAN_BUILD_ONLY", "").split(",") if m]
    names = [m for m in MODULES if (not only or m in only) and os.path.exists(f"ext/{m}.pyx")]
    exts = [
        Extension(
            f"connscan.{name}",
            [f"ext/{name}.pyx"],
            include_dirs=["ext", numpy.get_include()],
            extra_compile_args=["-O3"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for name in names
    ]
    return cythonize(exts, language_level=3, compiler_directives={"embedsignature": True})


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
