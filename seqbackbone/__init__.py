"""seqbackbone: Mamba (selective state-space) backbones for audio, DNA and image sequences."""

__version__ = "0.1.0"

# layers and backbone
# (exports are added here as the modules land)
from .backbone import BackboneConfig, Block, MambaBackbone  # noqa: E402, F401
from .cache import InferenceCache, MambaCache  # noqa: E402, F401
from .layers import LayerNorm, RMSNorm  # noqa: E402, F401
from .mamba import Mamba  # noqa: E402, F401

# encoders, heads, models, registry
