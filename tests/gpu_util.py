"""Whether a real CUDA GPU is usable (for the ``gpu`` marker)."""
import functools


@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason():
    """None when CuPy sees a GPU; otherwise a sentence saying why GPU tests cannot run."""
    try:
        import cupy
    except Exception as e:  # noqa: BLE001
        return f"CuPy is not importable ({type(e).__name__}: {e}); install the [cupy] extra on a GPU machine"
    try:
        if cupy.cuda.is_available() and cupy.cuda.runtime.getDeviceCount() > 0:
            return None
        return "CuPy is installed but no CUDA GPU is visible"
    except Exception as e:  # noqa: BLE001
        return f"CuPy is installed but CUDA failed ({type(e).__name__}: {e})"
