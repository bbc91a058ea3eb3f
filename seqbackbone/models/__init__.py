"""The model zoo: importing this package registers every named model, and the image ones in timm as soon as timm
is imported (seqbackbone.timm_compat; timm itself is not imported here, it takes seconds)."""

from .. import timm_compat
from . import audio, dna, features, vision  # noqa: F401  (registration side effects)

timm_compat.register_when_timm_loads()
