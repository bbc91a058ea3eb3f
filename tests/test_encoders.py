"""Encoders against independent references: mu-law codes, frame masks, log-mel, patches, pixels, features."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio
from timm.layers import resample_abs_pos_embed

from seqbackbone.encoders import (
    DnaEncoder,
    FrameEncoder,
    LinearEncoder,
    MelEncoder,
    MuLawEncoder,
    PatchEncoder,
    PixelEncoder,
)


def _wave(B=2, T=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, T, generator=g) * 2 - 1


def test_mu_law_tokens_are_torchaudio_codes():
    enc = MuLawEncoder(8)
    x = _wave()
    codes = torchaudio.functional.mu_law_encoding(x, 256)
    tokens, mask = enc(x)
    assert mask is None
    torch.testing.assert_close(tokens, enc.embedding.weight[codes], rtol=0, atol=0)
    assert torch.equal(enc.encode_targets(x.clamp(-1, 1) * 1.5), torchaudio.functional.mu_law_encoding(
        (x * 1.5).clamp(-1, 1), 256))  # out-of-range samples clip


def test_frame_encoder_shapes_and_mask():
    enc = FrameEncoder(16, frame_size=32)
    x = _wave(3, 200)
    mask = torch.arange(200)[None] < torch.tensor([[200], [64], [65]])
    tokens, fmask = enc(x, mask)
    assert tokens.shape == (3, math.ceil(200 / 32), 16)
    assert fmask.sum(1).tolist() == [7, 2, 3]  # a frame with one real sample is real
    # real frames do not see what lies in the padding
    x2 = x.clone()
    x2[~mask] = 0.7
    tokens2, _ = enc(x2, mask)
    torch.testing.assert_close(tokens2[fmask], tokens[fmask])


def test_mel_encoder_matches_reference():
    torch.manual_seed(0)
    enc = MelEncoder(16, sample_rate=8000, n_mels=32, n_fft=256, hop_length=80, patch_frames=2)
    x = _wave(1, 800)
    mel = torchaudio.transforms.MelSpectrogram(8000, n_fft=256, hop_length=80, n_mels=32, pad_mode="constant")
    spec = torch.log(mel(x) + 1e-6)  # (1, 32, 11)
    assert spec.shape[-1] == 800 // 80 + 1
    spec = torch.nn.functional.pad(spec, (0, 1))  # 11 frames -> 6 patches of 2
    ref = enc.norm(torch.nn.functional.conv1d(spec, enc.proj.weight, enc.proj.bias, stride=2).transpose(1, 2))
    tokens, _ = enc(x)
    torch.testing.assert_close(tokens, ref, rtol=1e-4, atol=1e-4)


def test_audio_input_errors():
    enc = FrameEncoder(16)
    with pytest.raises(TypeError, match="float waveforms"):
        enc(torch.zeros(2, 100, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        enc(torch.zeros(2, 3, 100))
    with pytest.raises(ValueError, match="mask"):
        enc(torch.zeros(2, 100), torch.ones(2, 99, dtype=torch.bool))
    tokens, _ = enc(torch.zeros(2, 1, 100))  # (B, 1, T) mono is accepted
    assert tokens.shape[0] == 2


def test_dna_encoder_derives_mask():
    enc = DnaEncoder(8)
    ids = torch.tensor([[4, 5, 6, 0], [7, 7, 7, 7]])
    tokens, mask = enc(ids)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert enc(ids[1:])[1] is None  # no padding, no mask
    torch.testing.assert_close(tokens, enc.embedding.weight[ids], rtol=0, atol=0)
    with pytest.raises(TypeError, match="waveform"):
        enc(torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        enc(ids[0])


@pytest.mark.parametrize("cls_token", ["middle", "first", None])
def test_patch_encoder_layout(cls_token):
    torch.manual_seed(0)
    enc = PatchEncoder(8, img_size=16, patch_size=4, in_chans=3, cls_token=cls_token)
    x = torch.randn(2, 3, 16, 16)
    tokens, mask = enc(x)
    n = 16
    assert mask is None and tokens.shape == (2, n + (cls_token is not None), 8)
    # independent reference: conv patches in raster order plus position embeddings
    patches = torch.nn.functional.conv2d(x, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=4)
    ref = patches.flatten(2).transpose(1, 2) + enc.pos_embed
    if cls_token == "middle":
        i = n // 2
        torch.testing.assert_close(tokens[:, i], enc.cls_token[0].expand(2, -1))
        ref = torch.cat([ref[:, :i], enc.cls_token.expand(2, -1, -1), ref[:, i:]], 1)
    elif cls_token == "first":
        ref = torch.cat([enc.cls_token.expand(2, -1, -1), ref], 1)
    torch.testing.assert_close(tokens, ref, rtol=1e-5, atol=1e-5)
    if cls_token:
        assert enc.cls_index(tokens.shape[1]) == (n // 2 if cls_token == "middle" else 0)


def test_patch_encoder_resamples_position_embeddings():
    torch.manual_seed(0)
    enc = PatchEncoder(8, img_size=16, patch_size=4, in_chans=1, cls_token="middle")
    x = torch.randn(1, 1, 24, 8)  # grid 6 x 2 instead of 4 x 4
    tokens, _ = enc(x)
    assert tokens.shape == (1, 12 + 1, 8)
    pos = resample_abs_pos_embed(enc.pos_embed, new_size=[6, 2], old_size=[4, 4], num_prefix_tokens=0)
    patches = torch.nn.functional.conv2d(x, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=4)
    ref = patches.flatten(2).transpose(1, 2) + pos
    torch.testing.assert_close(torch.cat([tokens[:, :6], tokens[:, 7:]], 1), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no mask"):
        enc(x, torch.ones(1, 12, dtype=torch.bool))
    with pytest.raises(TypeError, match="float images"):
        enc(torch.zeros(1, 1, 16, 16, dtype=torch.uint8))


def test_pixel_encoder_raster_order():
    enc = PixelEncoder(4, in_chans=2)
    x = torch.randn(1, 2, 3, 5)
    tokens, _ = enc(x)
    assert tokens.shape == (1, 15, 4)
    for i in range(15):
        torch.testing.assert_close(tokens[0, i], enc.proj(x[0, :, i // 5, i % 5]))


def test_linear_encoder_checks():
    enc = LinearEncoder(8, in_chans=3)
    x = torch.randn(2, 5, 3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    tokens, m = enc(x, mask)
    torch.testing.assert_close(tokens, x @ enc.proj.weight.T + enc.proj.bias)
    assert m is not None
    with pytest.raises(ValueError, match="in_chans=3"):
        enc(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"\(B, L, C\)"):
        enc(torch.randn(2, 5))


def test_unscaled_pcm_and_out_of_range_ids_raise():
    with pytest.raises(ValueError, match="32768"):
        FrameEncoder(8)(torch.randint(-32768, 32767, (1, 64)).float())
    FrameEncoder(8)(torch.full((1, 64), 1.2))  # mild overshoot is accepted
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        DnaEncoder(8)(torch.tensor([[4, 5, 12]]))
    with pytest.raises(ValueError, match=r"\[0, 9\)"):
        DnaEncoder(8)(torch.tensor([[4, -1, 5]]))
