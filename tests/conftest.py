"""Shared test fixtures.

``shared_dir`` points at ``../shared`` (corpus, fixtures, specs) beside the
project. It is absent on users' machines, so tests that need it skip cleanly.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ANONYMIZE_SHARED", ROOT.parent / "shared"))


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
