"""seqbackbone: Mamba (selective state-space) backbones for audio, DNA and image sequences."""

__version__ = "0.1.0"

# layers and backbone
# (exports are added here as the modules land)

# encoders, heads, models, registry
