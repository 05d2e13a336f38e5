"""Shared fixtures: tiny generated datasets (made by the tests) and the real shared data; the
``gpu`` tier skipped, with its reason printed (``-ra``), where there is no CUDA device."""

from __future__ import annotations

import pytest

from bmglib import paths


def pytest_collection_modifyitems(config, items):
    """Skip every ``gpu`` test when ``torch.cuda.is_available()`` is false."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch  # here, not at the top: only when gpu tests were collected

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is False)")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_result_cache(monkeypatch):
    """Bootstrapped tables are computed, not read from ``data/cache/results`` (``cache.cached_result``):
    a test that patches a helper sees it called. ``tests/test_cache.py`` turns the cache back on."""
    monkeypatch.setenv("BMG_RESULT_CACHE", "0")


@pytest.fixture(scope="session")
def shared_real():
    """``../shared/data/real`` — real metadata and 150 ISIC images; skip when absent."""
    if not (paths.SHARED_REAL / "fitzpatrick17k.csv").exists():
        pytest.skip(f"real shared data not found at {paths.SHARED_REAL}")
    return paths.SHARED_REAL


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A 96-image, 32 px generated pool and a 48-image balanced test set."""
    from bmglib.data import synthetic

    root = tmp_path_factory.mktemp("synthetic")
    pool = synthetic.generate_dataset(root / "pool", 96, 32, seed=3, min_per_cell=2, progress=False)
    test = synthetic.generate_dataset(root / "test", 48, 32, seed=3, counts="balanced",
                                      stream="test", progress=False)
    return pool, test
