"""Builds the cuSPARSELt XLA FFI extension with the host C++ compiler (no nvcc, no GPU).

Usage (after ``pip install -e ".[cusparselt]"``, which pulls the cuSPARSELt and CUDA
runtime/crt header wheels)::

    python -m jaxnm.kernels.cusparselt.build            # writes _jaxnm_cusparselt.so here
    python -m jaxnm.kernels.cusparselt.build --out DIR  # or into DIR (then set
                                                        # JAXNM_CUSPARSELT_LIBRARY=DIR/...)

Headers come from ``jax.ffi.include_dir()`` (XLA FFI) and the installed NVIDIA wheels
(``cusparseLt.h``, ``cuda_runtime_api.h``, ``crt/host_defines.h``; the cu13 wheels install
under ``nvidia/cu13/``, the cu12 ones under ``nvidia/<component>/``). The extension links
``libcusparseLt.so.0`` and the CUDA runtime ``libcudart.so.<major>`` found beside them, with
their directories as rpath.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

from jaxnm.kernels.cusparselt.library import DEFAULT_OUTPUT

SOURCE = Path(__file__).parent / "csrc" / "jaxnm_cusparselt.cc"
SHIM_DIR = Path(__file__).parent / "csrc" / "cusparse_shim"


class BuildError(RuntimeError):
    """The extension cannot be built here (missing compiler, headers or libraries)."""


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Where the build finds its compiler, headers and libraries."""

    compiler: str
    include_dirs: tuple[Path, ...]
    cusparselt_lib: Path  # libcusparseLt.so.0
    cudart_lib: Path  # libcudart.so.<major>


def nvidia_roots() -> list[Path]:
    """The ``nvidia/`` package directories on ``sys.path`` (where the CUDA wheels install)."""
    roots = []
    for entry in sys.path:
        candidate = Path(entry or ".") / "nvidia"
        if candidate.is_dir() and candidate not in roots:
            roots.append(candidate)
    return roots


def _find(roots: list[Path], pattern: str) -> list[Path]:
    return sorted({p for root in roots for p in root.glob(pattern)})


def find_toolchain(compiler: str | None = None) -> Toolchain:
    """Locates everything the build needs, or raises :class:`BuildError` naming what is missing."""
    import jax

    cxx = compiler or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise BuildError("No C++ compiler found (g++ or c++ on PATH, C++17).")
    roots = nvidia_roots()
    missing_wheels = (
        'install the optional extra: pip install -e ".[cusparselt]" (cu13: '
        "nvidia-cusparselt-cu13, nvidia-cuda-runtime, nvidia-cuda-crt; cu12: "
        "nvidia-cusparselt-cu12, nvidia-cuda-runtime-cu12, nvidia-cuda-nvcc-cu12)"
    )
    header = _find(roots, "**/include/cusparseLt.h")
    runtime = _find(roots, "**/include/cuda_runtime_api.h")
    crt = _find(roots, "**/include/crt/host_defines.h")
    libs = _find(roots, "**/lib/libcusparseLt.so.0")
    cudart = _find(roots, "**/lib/libcudart.so.[0-9]*")
    for what, found in [
        ("cusparseLt.h", header),
        ("cuda_runtime_api.h", runtime),
        ("crt/host_defines.h", crt),
        ("libcusparseLt.so.0", libs),
        ("libcudart.so.<major>", cudart),
    ]:
        if not found:
            searched = ", ".join(str(r) for r in roots) or "no nvidia/ directory on sys.path"
            raise BuildError(f"{what} not found (searched {searched}); {missing_wheels}.")
    includes = [Path(jax.ffi.include_dir()), header[0].parent, runtime[0].parent]
    includes += [c.parent.parent for c in crt]
    # cu12's cusparseLt.h includes cusparse.h for three enums: the real one when installed
    # (nvidia-cusparse-cu12, ~370 MB), else csrc/cusparse_shim. cu13's has its own stub.
    real = [p.parent for p in _find(roots, "**/include/cusparse.h")]
    includes += real or [SHIM_DIR]
    unique = tuple(dict.fromkeys(includes))
    return Toolchain(cxx, unique, libs[0], cudart[0])


def compile_command(tc: Toolchain, output: Path) -> list[str]:
    """The compiler invocation for :data:`SOURCE` -> ``output``."""
    cmd = [tc.compiler, "-std=c++17", "-O2", "-shared", "-fPIC"]
    cmd += [f"-I{d}" for d in tc.include_dirs]
    cmd += [str(SOURCE), "-o", str(output)]
    for lib in (tc.cusparselt_lib, tc.cudart_lib):
        cmd += [f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}"]
    return cmd


def build(output: Path = DEFAULT_OUTPUT, *, compiler: str | None = None) -> Path:
    """Compiles the extension into ``output`` and returns its path.

    Raises:
      BuildError: a missing compiler/header/library, or a failed compile (its log attached).
    """
    tc = find_toolchain(compiler)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".so.tmp")
    proc = subprocess.run(compile_command(tc, tmp), capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"Compiling {SOURCE.name} failed:\n{proc.stderr[-4000:]}")
    tmp.replace(output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUTPUT, help="output .so path")
    parser.add_argument("--cxx", default=None, help="C++ compiler (default: g++)")
    args = parser.parse_args(argv)
    try:
        path = build(args.out, compiler=args.cxx)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
