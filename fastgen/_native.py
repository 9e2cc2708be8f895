"""Loader for the optional CUDA C++ kernels in ``csrc/`` (``fastgen._C``).

Nothing here runs at import.  No op uses a native kernel yet: the conv kernels are all
Triton.  Native kernels (e.g. persistent sampling loops) compile at first use through
NVRTC via cupy and are cached per GPU architecture; their absence is never an error.
"""
import os
from typing import List

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def cuda_sources() -> List[str]:
    """The ``.cu`` files a native build would compile (empty in an installed wheel)."""
    if not os.path.isdir(CSRC):
        return []
    return sorted(f for f in os.listdir(CSRC) if f.endswith(".cu"))


def status() -> str:
    """One line for ``fastgen info``: whether native kernels exist and can be built here."""
    sources = cuda_sources()
    if not sources:
        return "no native kernels in this version (all ops run on Triton or the reference)"
    try:
        import cupy  # noqa: F401
    except Exception:
        return f"{len(sources)} CUDA sources; not built: cupy is not installed (pip install fastgen[cuda])"
    return f"{len(sources)} CUDA sources; compiled with NVRTC at first use"
