"""Face verification and identification on top of any h_model face checkpoint.

>>> from h_model.faces import FaceVerifier, Gallery
>>> v = FaceVerifier.load("runs/faces/best")          # an h_model checkpoint trained on face crops
>>> v.verify("a.jpg", "b.jpg").same
>>> g = Gallery("my_gallery", verifier=v); g.enroll("ada", ["ada1.jpg", "ada2.jpg"])
>>> g.identify("who.jpg", k=3).name

``FaceVerifier.load()`` with no path loads the bundled default face model (``h_model/bundled/faces_default``).
"""
from ..preprocess import ImageDecodeError
from .detect import Face, FaceDetector, NoFaceError, align_face, load_rgb
from .pairs import ImageIndex, PairList, make_pairs, pair_metrics, read_pairs, write_pairs
from .scores import calibrate_threshold
from .verifier import FaceVerifier, NoModelError, VerifyResult, save_threshold

__all__ = ["Face", "FaceDetector", "NoFaceError", "ImageDecodeError", "align_face", "load_rgb",
           "FaceVerifier", "VerifyResult", "NoModelError", "calibrate_threshold", "save_threshold",
           "Gallery", "Identification", "Match", "EnrollResult", "PersonInfo", "ModelMismatchError",
           "ImageIndex", "PairList", "make_pairs", "pair_metrics", "read_pairs", "write_pairs"]
_GALLERY = {"EnrollResult", "Gallery", "Identification", "Match", "ModelMismatchError", "PersonInfo"}


def __getattr__(name: str):
    """The gallery's names load on first use, so training and verification need no faiss."""
    if name in _GALLERY:
        from . import gallery

        return getattr(gallery, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
