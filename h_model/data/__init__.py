"""Datasets: decoded once into uint8 tensors, split by class."""
from .folder import load_folder, split_classes
from .imageset import ImageSet, decode_files
from .omniglot import omniglot_preprocess, omniglot_splits
from .root import DataNotFoundError, resolve_data_root

__all__ = ["ImageSet", "decode_files", "load_folder", "split_classes", "omniglot_splits",
           "omniglot_preprocess", "DataNotFoundError", "resolve_data_root"]
from .splits import DATASETS, load_splits  # noqa: E402

__all__ += ["DATASETS", "load_splits"]
