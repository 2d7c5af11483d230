"""Shared test set-up: the ``gpu`` marker's skip (or, with RING_ALLREDUCE_REQUIRE_GPU=1, failure)."""
import os

import pytest

def pytest_collection_modifyitems(config, items):
    """Skip GPU tests with a reason when no GPU is usable, or fail them if RING_ALLREDUCE_REQUIRE_GPU=1."""
    gpu_items = [it for it in items if it.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from tests.gpu_util import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("RING_ALLREDUCE_REQUIRE_GPU") == "1":
        for it in gpu_items:
            it.add_marker(pytest.mark.xfail(reason=f"GPU required but {reason}", run=False, strict=True))
        raise pytest.UsageError(f"RING_ALLREDUCE_REQUIRE_GPU=1 but {reason}")
    for it in gpu_items:
        it.add_marker(pytest.mark.skip(reason=reason))
