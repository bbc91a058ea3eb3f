"""seqbackbone: Mamba (selective state-space) backbones for audio, DNA and image sequences."""

__version__ = "0.1.0"

# layers and backbone
# (exports are added here as the modules land)
from .backbone import BackboneConfig, Block, MambaBackbone  # noqa: E402, F401
from .cache import InferenceCache, MambaCache  # noqa: E402, F401
from .layers import LayerNorm, RMSNorm  # noqa: E402, F401
from .mamba import Mamba  # noqa: E402, F401

# encoders, heads, models, registry
# isort: split
from . import models  # noqa: E402, F401  (registers the model zoo, and its image models in timm)
from .hub import from_pretrained  # noqa: E402, F401
from .model import SequenceModel, SequenceModelConfig  # noqa: E402, F401
from .registry import create_model, is_model, list_models, model_table, register_model  # noqa: E402, F401
from .tokenizer import DnaTokenizer  # noqa: E402, F401
