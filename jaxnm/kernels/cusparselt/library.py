"""Loading the built cuSPARSELt extension and registering its XLA FFI targets.

The extension (``_jaxnm_cusparselt.so``, built by ``python -m jaxnm.kernels.cusparselt.build``)
links ``libcusparseLt.so.0`` and the CUDA runtime from the NVIDIA wheels. :func:`load` finds
it (``JAXNM_CUSPARSELT_LIBRARY`` or beside this file), loads it once per process and registers
the three handlers for platform ``"CUDA"``. Registration needs no GPU: a jit that calls them
compiles for an H100/H200 from a CPU-only host (deviceless), and runs on a real GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import jax

from jaxnm.kernels.cusparselt import layout

#: Where ``python -m jaxnm.kernels.cusparselt.build`` writes the extension by default.
DEFAULT_OUTPUT = Path(__file__).parent / "_jaxnm_cusparselt.so"

ENV_VAR = "JAXNM_CUSPARSELT_LIBRARY"

# FFI target name -> exported handler symbol.
TARGETS = {
    "jaxnm_cslt_compress": "JaxnmCsltCompress",
    "jaxnm_cslt_matmul": "JaxnmCsltMatmul",
    "jaxnm_cslt_search": "JaxnmCsltSearch",
}
COMPRESS, MATMUL, SEARCH = TARGETS


class CusparseLtUnavailableError(RuntimeError):
    """The cuSPARSELt extension is not built, or cuSPARSELt itself cannot be loaded."""


def library_path() -> Path:
    """Where :func:`load` looks for the extension: ``$JAXNM_CUSPARSELT_LIBRARY`` or the
    default build output beside this module."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_OUTPUT)


@functools.cache
def load() -> ctypes.CDLL:
    """Loads the extension and registers its FFI targets (once per process).

    Returns:
      the loaded ``ctypes.CDLL`` (also exposes ``jaxnm_cslt_version``,
      ``jaxnm_cslt_header_version`` and ``jaxnm_cslt_compressed_size``).

    Raises:
      CusparseLtUnavailableError: the extension is not built, or ``libcusparseLt.so.0`` /
        the CUDA runtime cannot be loaded; the message says how to fix it.
    """
    path = library_path()
    if not path.is_file():
        raise CusparseLtUnavailableError(
            f"The jaxnm cuSPARSELt extension is not built ({path} does not exist). Install the "
            'optional extra and build it: pip install -e ".[cusparselt]" && '
            "python -m jaxnm.kernels.cusparselt.build"
            + (f" (or fix ${ENV_VAR})" if os.environ.get(ENV_VAR) else "")
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise CusparseLtUnavailableError(
            f"Cannot load the jaxnm cuSPARSELt extension {path}: {e}. It needs "
            "libcusparseLt.so.0 and the CUDA runtime it was built against (the "
            "nvidia-cusparselt-cu12/cu13 and CUDA runtime wheels): reinstall the "
            '".[cusparselt]" extra and rebuild with python -m jaxnm.kernels.cusparselt.build.'
        ) from None
    lib.jaxnm_cslt_version.restype = ctypes.c_int64
    lib.jaxnm_cslt_header_version.restype = ctypes.c_int64
    lib.jaxnm_cslt_compressed_size.restype = ctypes.c_int
    lib.jaxnm_cslt_compressed_size.argtypes = [
        ctypes.c_int,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64),
    ]
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="CUDA")
    return lib


def available() -> bool:
    """Whether :func:`load` succeeds (the extension is built and cuSPARSELt loads)."""
    try:
        load()
    except CusparseLtUnavailableError:
        return False
    return True


def version() -> int:
    """cuSPARSELt version of the loaded library, ``major·10⁶ + minor·100 + patch``."""
    return int(load().jaxnm_cslt_version())


def library_compressed_nbytes(rows: int, cols: int, dtype, device: int = 0) -> int:
    """The compressed size cuSPARSELt reports for a ``(rows, cols)`` 2:4 operand (needs a GPU).

    For checking :func:`~jaxnm.kernels.cusparselt.compressed_nbytes` on a device.

    Raises:
      RuntimeError: no usable GPU, or cuSPARSELt refused the shape (status named).
    """
    size = ctypes.c_int64()
    code = layout.CUDA_TYPE[layout.check_dtype(dtype, "dtype")]
    status = load().jaxnm_cslt_compressed_size(device, rows, cols, code, ctypes.byref(size))
    if status != 0:
        raise RuntimeError(
            f"cuSPARSELt compressed-size query failed for ({rows}, {cols}) {dtype} on device "
            f"{device}: status {status} (-1: CUDA error, -2: GPU older than sm_80, else a "
            "cusparseStatus_t)."
        )
    return int(size.value)
