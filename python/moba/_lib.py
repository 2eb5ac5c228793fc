"""ctypes loader of libmoba_ops.so (src/pyops/moba_ops.h), installed inside the package.

The library has a plain C ABI and does not link against libtorch, so the package works
with any torch build; tensors cross as raw pointers (tensor.data_ptr()), cu_seqlens as a
host int64 array, CUDA streams as cudaStream_t (torch.cuda.current_stream().cuda_stream).
MOBA_OPS_LIB=/path/to/libmoba_ops.so overrides the bundled library (development builds).
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

OK, INVALID, RUNTIME = 0, 1, 2
F32, F64 = 0, 1

_i64 = ctypes.c_int64
_int = ctypes.c_int
_dbl = ctypes.c_double
_vp = ctypes.c_void_p
_i64p = ctypes.POINTER(ctypes.c_int64)

# name -> argument types (all return int unless listed in _RESTYPE)
_SIGNATURES = {
    "moba_ops_last_error": [],
    "moba_ops_has_cuda": [],
    "moba_ops_build_info": [],
    "moba_cpu_gate": [_int, _i64p, _i64, _i64, _i64, _i64, _i64, _i64, _vp, _vp, _vp],
    "moba_cpu_moba_forward": [_int, _i64p, _i64, _i64, _i64, _i64, _i64, _i64, _dbl, _vp,
                              _vp, _vp, _vp, _vp, _vp],
    "moba_cpu_moba_backward": [_int, _i64p, _i64, _i64, _i64, _i64, _i64, _i64, _dbl, _vp,
                               _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp],
    "moba_cpu_dense_forward": [_int, _i64p, _i64, _i64, _i64, _i64, _dbl, _vp, _vp, _vp,
                               _vp, _vp],
    "moba_cpu_dense_backward": [_int, _i64p, _i64, _i64, _i64, _i64, _dbl, _vp, _vp, _vp,
                                _vp, _vp, _vp, _vp, _vp, _vp],
    "moba_cuda_gate": [_i64p, _i64, _i64, _i64, _i64, _i64, _i64, _vp, _vp, _vp, _vp],
    "moba_cuda_moba_forward": [_i64p, _i64, _i64, _i64, _i64, _i64, _i64, _dbl, _int, _vp,
                               _vp, _vp, _vp, _vp, _vp, _vp, _i64p],
    "moba_cuda_moba_backward": [_i64p, _i64, _i64, _i64, _i64, _i64, _i64, _dbl, _vp, _i64,
                                _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp, _vp],
    "moba_cuda_dense_forward": [_i64p, _i64, _i64, _i64, _i64, _dbl, _vp, _vp, _vp, _vp,
                                _vp, _vp],
    "moba_cuda_dense_backward": [_i64p, _i64, _i64, _i64, _i64, _dbl, _vp, _vp, _vp, _vp,
                                 _vp, _vp, _vp, _vp, _vp, _vp],
    "moba_cuda_wgmma_available": [_i64],
    "moba_cuda_clear_plans": [],
    "moba_cuda_set_allocator": [_vp, _vp, _vp],
}
_RESTYPE = {"moba_ops_last_error": ctypes.c_char_p, "moba_ops_build_info": ctypes.c_char_p}


def _path() -> Path:
    env = os.environ.get("MOBA_OPS_LIB")
    if env:
        return Path(env)
    return Path(__file__).with_name("libmoba_ops.so")


def _load():
    path = _path()
    if not path.exists():
        raise ImportError(
            f"moba: {path} not found; install the package with `pip install .` from the "
            "repository root (docs/python.md)")
    lib = ctypes.CDLL(str(path))
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = _RESTYPE.get(name, ctypes.c_int)
    return lib


lib = _load()
HAS_CUDA = bool(lib.moba_ops_has_cuda())


class MobaOpsError(RuntimeError):
    """A failure at run time inside the C++/CUDA library (CUDA error, out of memory)."""


# An exception raised inside the device-allocator callback (ops.py), e.g. torch's
# OutOfMemoryError: re-raised by check() after the C call reports the failure.
alloc_error: "list[BaseException]" = []


def check(rc: int) -> None:
    """Raises for a non-zero return code: ValueError for bad input, MobaOpsError else."""
    if rc == OK:
        return
    if alloc_error:
        err = alloc_error.pop()
        alloc_error.clear()
        raise err
    msg = lib.moba_ops_last_error().decode("utf-8", "replace")
    if rc == INVALID:
        raise ValueError(f"moba: {msg}")
    raise MobaOpsError(f"moba: {msg}")


def cu_array(cu: "list[int]"):
    """A host int64 array of the offsets (B + 1), for the cu_seqlens arguments."""
    return (ctypes.c_int64 * len(cu))(*cu)


def build_info() -> str:
    return lib.moba_ops_build_info().decode()
