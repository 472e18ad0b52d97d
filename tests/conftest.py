"""Shared test fixtures.

``shared_dir`` points at ``../shared`` (corpus, fixtures, specs) beside the
project. It is absent on users' machines, so tests that need it skip cleanly.

Seeds: every random choice a test makes comes from ``ANONYMIZE_TEST_SEED``
(default 0). Tests take the ``test_seed`` fixture (an int) for their own
generators, and an autouse fixture seeds Python's, NumPy's and torch's global
generators per test from that seed and the test's id, so a test's numbers do
not depend on which tests ran before it. No test may depend on a particular
seed: run ``ANONYMIZE_TEST_SEED=1 pytest`` to check. Thread counts come from
the usual environment (``OMP_NUM_THREADS``); tests do not pin them, so
``OMP_NUM_THREADS=1`` and ``=2`` runs really differ.
"""
from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ANONYMIZE_SHARED", ROOT.parent / "shared"))
TEST_SEED = int(os.environ.get("ANONYMIZE_TEST_SEED", "0"))


def seed_for(*names: object) -> int:
    """A 31-bit seed from ``ANONYMIZE_TEST_SEED`` and ``names`` (stable across runs and machines)."""
    key = "\x1f".join([str(TEST_SEED), *map(str, names)])
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def pytest_report_header(config: pytest.Config) -> str:
    import torch

    return (f"anonymize: ANONYMIZE_TEST_SEED={TEST_SEED}, torch threads={torch.get_num_threads()} "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


@pytest.fixture(scope="session")
def test_seed() -> int:
    """The run's test seed (``ANONYMIZE_TEST_SEED``, default 0); derive generators from it."""
    return TEST_SEED


@pytest.fixture(autouse=True)
def _seed_global_generators(request: pytest.FixtureRequest) -> None:
    """Seed random, numpy and torch's global generators from the test seed and the test id."""
    import numpy as np
    import torch

    s = seed_for(request.node.nodeid)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "corpus").is_dir():
        pytest.skip(f"../shared is not present ({SHARED}); corpus/fixture tests skipped")
    return SHARED


@pytest.fixture(scope="session")
def sample_faces() -> dict[str, "object"]:
    """Real public-domain photos shipped with dependencies: astronaut (skimage) and Grace Hopper (matplotlib)."""
    import numpy as np
    from PIL import Image

    out: dict[str, object] = {}
    try:
        from skimage import data

        out["astronaut"] = np.ascontiguousarray(data.astronaut())
    except Exception:  # pragma: no cover - skimage missing
        pass
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            out["grace_hopper"] = np.asarray(Image.open(fh).convert("RGB"))
    except Exception:  # pragma: no cover - matplotlib missing
        pass
    if not out:
        pytest.skip("neither scikit-image nor matplotlib sample images are available")
    return out
