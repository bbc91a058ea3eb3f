"""Encoders: raw input of a modality -> tokens (B, L, d_model) and a mask (B, L) bool or None.

The protocol is just `encoder(x, mask=None) -> (tokens, mask)`; any module that follows it plugs into
`SequenceModel`. Language-model encoders also have `embed(ids) -> (B, L, d_model)` and an `embedding` (nn.Embedding)
that the tied LM head shares.
"""

from .audio import FrameEncoder, MelEncoder, MuLawEncoder, check_waveform, resample_waveform
from .dna import DnaEncoder, check_token_ids, rc_augment, reverse_complement_ids
from .features import LinearEncoder
from .image import PatchEncoder, PixelEncoder, check_image

__all__ = [
    "DnaEncoder",
    "FrameEncoder",
    "LinearEncoder",
    "MelEncoder",
    "MuLawEncoder",
    "PatchEncoder",
    "PixelEncoder",
    "check_image",
    "check_token_ids",
    "check_waveform",
    "rc_augment",
    "resample_waveform",
    "reverse_complement_ids",
]
