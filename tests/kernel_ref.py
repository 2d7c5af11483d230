"""The NumPy reference every reduction kernel (host, simulator, GPU) is tested against."""
import numpy as np

UFUNC = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}


def reference(a, b, op, div):
    """``a op b`` in the dtype for integers (wrapping as NumPy's do), then floor division; floats in float64."""
    if a.dtype.kind != "f":
        r = UFUNC[op](a, b)
        return r if div is None else np.floor_divide(r, a.dtype.type(div))
    r = UFUNC[op](a.astype(np.float64), b.astype(np.float64))
    return r if div is None else r / div


def assert_close(got, ref, dtype, what):
    """Integers exactly; floats within 2 ulp of the float64 reference (NaN equal to NaN).

    ``a op b`` rounds once to the dtype (float16: computed in float32) and the division once more (NumPy's two
    passes) or not at all (fused kernels): at most 2 ulp, plus 2 subnormal steps near zero.
    """
    dt = np.dtype(dtype)
    if dt.kind != "f":
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    np.testing.assert_allclose(np.asarray(got).astype(np.float64), ref, rtol=2 * np.finfo(dt).eps,
                               atol=2 * np.finfo(dt).smallest_subnormal, equal_nan=True, err_msg=what)
