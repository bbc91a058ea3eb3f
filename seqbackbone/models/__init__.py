"""The model zoo: importing this package registers every named model (and the image ones in timm)."""

from .. import timm_compat
from . import audio, dna, features, vision  # noqa: F401  (registration side effects)

timm_compat.register_image_models()
