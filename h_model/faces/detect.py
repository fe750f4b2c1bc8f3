"""Face detection and aligned crops for the face library: :mod:`h_model.detect`, re-exported here.

The detector lives below the face library (in :mod:`h_model.detect`) because the data layer
builds training crops with it; this module keeps ``h_model.faces.detect`` imports working.
"""
from ..detect import *  # noqa: F401,F403
from ..detect import __all__  # noqa: F401
