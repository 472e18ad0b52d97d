"""Small helpers shared by the latent-space face methods (fsap, diffusion).

Example:
    >>> import numpy as np, torch
    >>> image_to_tensor(np.zeros((4, 6, 3), np.uint8), torch.device("cpu")).shape
    torch.Size([1, 3, 4, 6])
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import WeightsMissing
from ..types import Face


def check_method_weights(names: Sequence[str], method: str) -> dict[str, Path]:
    """Local paths of every weights file ``method`` needs, or WeightsMissing naming the one fetch command."""
    from .. import weights

    try:
        return weights.weights_paths(list(names), purpose=f"--method {method}")
    except WeightsMissing as exc:
        raise WeightsMissing(exc.names, f"--method {method} (or fetch them all with: anonymize fetch-weights "
                                        f"--method {method})") from None


def face_landmarks68(image: np.ndarray, face: Face) -> np.ndarray:
    """The face's 68 landmarks: from the detector when it gave them, else dlib's 68-point model on its box."""
    if face.landmarks68 is not None:
        return np.asarray(face.landmarks68, dtype=np.float64)
    from ..faces.detect import dlib_shape68

    return dlib_shape68(image, face.box)


def image_to_tensor(img: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1).unsqueeze(0).float() / 255.0
