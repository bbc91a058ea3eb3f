"""Audio encoders: raw waveform (B, T) -> tokens (B, L, d_model) and a token mask.

Every encoder takes float waveforms in [-1, 1] at its `sample_rate`, with an optional sample mask (B, T) (True = real
sample; padding is assumed at the end of each row). Audio at another rate is resampled with
torchaudio.functional.resample when `sample_rate=` is passed to forward.

    MuLawEncoder   one token per sample: 8-bit mu-law code -> embedding (input of waveform language models)
    FrameEncoder   learned frames: strided Conv1d over samples (kernel = stride = frame_size), then k=3 convs
    MelEncoder     log-mel spectrogram (torchaudio MelSpectrogram), patches of `patch_frames` frames as tokens

Dimension glossary: B batch, T samples, L tokens, D d_model, F mel frames, M mel bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

PCM_PEAK_LIMIT = 4.0


def check_waveform(x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate a waveform batch; returns x (B, T) and mask (B, T) bool or None."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"audio models take a waveform tensor (B, T), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"audio models take float waveforms (B, T) in [-1, 1], got dtype {x.dtype} "
            "(token ids belong to a DNA model; integer PCM must be divided by 32768)"
        )
    if x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]  # (B, 1, T) mono -> (B, T)
    if x.ndim != 2:
        raise ValueError(f"audio models take waveforms of shape (B, T) (or (B, 1, T)), got shape {tuple(x.shape)}")
    if mask is not None:
        if mask.shape != x.shape:
            raise ValueError(f"mask must have the waveform's shape {tuple(x.shape)}, got {tuple(mask.shape)}")
        mask = mask.bool()
    if x.numel():
        peak = float(x.detach().abs().amax())
        if peak > PCM_PEAK_LIMIT:  # a little above 1 is gain headroom; far above is unscaled integer PCM
            raise ValueError(
                f"waveform values reach {peak:.4g}; audio models take floats in [-1, 1] "
                "(divide 16-bit PCM by 32768)"
            )
    return x, mask


def resample_waveform(
    x: torch.Tensor, mask: torch.Tensor | None, orig_rate: int, new_rate: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resample x (B, T) from orig_rate to new_rate; the mask follows each row's length (right padding)."""
    if orig_rate == new_rate:
        return x, mask
    if mask is not None:
        x = x * mask  # padded samples are silence, as past the end of a lone recording
    y = torchaudio.functional.resample(x, orig_rate, new_rate)
    if mask is None:
        return y, None
    lengths = mask.sum(-1)
    new_lengths = torch.ceil(lengths.double() * new_rate / orig_rate).long()
    new_mask = torch.arange(y.shape[-1], device=y.device)[None, :] < new_lengths[:, None]
    return y, new_mask


class _WaveformEncoder(nn.Module):
    """Shared input handling: validation, the rate check and resampling."""

    sample_rate: int | None

    def prepare(
        self, x: torch.Tensor, mask: torch.Tensor | None, sample_rate: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = check_waveform(x, mask)
        if sample_rate is not None and sample_rate != self.sample_rate:
            if self.sample_rate is None:
                raise ValueError(
                    f"got sample_rate={sample_rate} but this encoder has no sample_rate to resample to; "
                    "build it with sample_rate=<the rate it was trained at>"
                )
            x, mask = resample_waveform(x, mask, int(sample_rate), int(self.sample_rate))
        if mask is not None:
            x = x * mask  # padded samples must not reach real tokens through the frame convs
        return x, mask


class MuLawEncoder(_WaveformEncoder):
    """One token per sample: waveform (B, T) -> mu-law codes (B, T) -> embedding (B, T, D).

    `encode_targets(wave)` gives the codes (next-code targets of a waveform language model are these shifted by one);
    `embed(codes)` embeds code ids directly (for generation); `embedding.weight` (256, D) is what the LM head ties to.
    """

    def __init__(
        self,
        d_model: int,
        quantization_channels: int = 256,
        sample_rate: int | None = 8000,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.quantization_channels = quantization_channels
        self.sample_rate = sample_rate
        self.vocab_size = quantization_channels
        self.embedding = nn.Embedding(quantization_channels, d_model, device=device, dtype=dtype)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def encode_targets(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_rate: int | None = None
    ) -> torch.Tensor:
        """Mu-law codes (B, T) long in [0, quantization_channels) of waveforms (B, T)."""
        x, mask = self.prepare(x, mask, sample_rate)
        return torchaudio.functional.mu_law_encoding(x.float().clamp(-1.0, 1.0), self.quantization_channels)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Code ids (B, L) long -> (B, L, D)."""
        return self.embedding(codes)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_rate: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = self.prepare(x, mask, sample_rate)
        codes = torchaudio.functional.mu_law_encoding(x.float().clamp(-1.0, 1.0), self.quantization_channels)
        return self.embedding(codes), mask


class FrameEncoder(_WaveformEncoder):
    """Learned frames: (B, T) -> Conv1d(1, D, frame_size, stride=frame_size) -> GELU -> n_conv x [Conv1d(k=3), GELU]
    -> LayerNorm -> (B, ceil(T / frame_size), D).

    A frame is real when it holds at least one real sample; padded frames are zeroed before every k=3 conv, so real
    frames see exactly what a lone, unpadded recording would give them.
    """

    def __init__(
        self,
        d_model: int,
        frame_size: int = 32,
        n_conv: int = 2,
        sample_rate: int | None = 8000,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if frame_size < 1:
            raise ValueError(f"frame_size must be >= 1, got {frame_size}")
        dd = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.frame_size = frame_size
        self.sample_rate = sample_rate
        self.frame = nn.Conv1d(1, d_model, frame_size, stride=frame_size, **dd)
        self.convs = nn.ModuleList(nn.Conv1d(d_model, d_model, 3, padding=1, **dd) for _ in range(n_conv))
        self.norm = nn.LayerNorm(d_model, **dd)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_rate: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = self.prepare(x, mask, sample_rate)
        T = x.shape[-1]
        n_frames = math.ceil(T / self.frame_size)
        pad = n_frames * self.frame_size - T
        x = F.pad(x.to(self.frame.weight.dtype), (0, pad))  # a partial last frame is completed with silence
        h = F.gelu(self.frame(x[:, None, :]))  # (B, D, F)
        frame_mask = None
        if mask is not None:
            frame_mask = F.pad(mask, (0, pad)).view(mask.shape[0], n_frames, self.frame_size).any(-1)  # (B, F)
        for conv in self.convs:
            if frame_mask is not None:
                h = h * frame_mask[:, None, :]
            h = F.gelu(conv(h))
        tokens = self.norm(h.transpose(1, 2))  # (B, F, D)
        return tokens, frame_mask


class MelEncoder(_WaveformEncoder):
    """Log-mel patches: (B, T) -> log MelSpectrogram (B, M, F) -> Conv1d(M, D, patch_frames, stride=patch_frames)
    -> LayerNorm -> (B, ceil(F / patch_frames), D), with F = T // hop_length + 1 (centred frames, zero padding).

    Frames past the end of a row's real samples are set to 0 (in the log domain), as the lone recording's frames are
    padded to whole patches, so a padded batch gives each row what it gets alone.

    SpecAugment (Park et al. 2019), training mode only and off by default: `freq_masks` bands of up to
    `freq_mask_width` mel bins and `time_masks` spans of up to `time_mask_width` frames (at most a fifth of the row's
    real frames) are set to the row's mean log-mel value; small audio data sets overfit without it.
    """

    def __init__(
        self,
        d_model: int,
        sample_rate: int = 8000,
        n_mels: int = 64,
        n_fft: int = 256,
        hop_length: int = 80,
        patch_frames: int = 2,
        freq_masks: int = 0,
        freq_mask_width: int = 8,
        time_masks: int = 0,
        time_mask_width: int = 10,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if sample_rate is None:
            raise ValueError("MelEncoder needs a sample_rate (the mel filter bank depends on it)")
        for name, value in (("freq_masks", freq_masks), ("freq_mask_width", freq_mask_width),
                            ("time_masks", time_masks), ("time_mask_width", time_mask_width)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_width = time_masks, time_mask_width
        dd = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.sample_rate = sample_rate
        self.hop_length = hop_length
        self.patch_frames = patch_frames
        self.n_mels = n_mels
        with torch.device("cpu"):  # the filter bank is computed with .item(); build it on the CPU, then move it
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, center=True,
                pad_mode="constant",
            )
        if device is not None:
            self.mel.to(device)
        self.proj = nn.Conv1d(n_mels, d_model, patch_frames, stride=patch_frames, **dd)
        self.norm = nn.LayerNorm(d_model, **dd)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_rate: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, mask = self.prepare(x, mask, sample_rate)
        spec = torch.log(self.mel(x.float()) + 1e-6)  # (B, M, F)
        n_frames = spec.shape[-1]
        frame_mask = None
        if mask is not None:
            frames_per_row = mask.sum(-1) // self.hop_length + 1  # a lone row of T_i samples has T_i // hop + 1
            frame_mask = torch.arange(n_frames, device=x.device)[None, :] < frames_per_row[:, None]
            spec = spec * frame_mask[:, None, :]
        if self.training and (self.freq_masks or self.time_masks):
            spec = self.spec_augment(spec, frame_mask)
        n_patches = math.ceil(n_frames / self.patch_frames)
        spec = F.pad(spec, (0, n_patches * self.patch_frames - n_frames))
        tokens = self.norm(self.proj(spec.to(self.proj.weight.dtype)).transpose(1, 2))  # (B, P, D)
        patch_mask = None
        if frame_mask is not None:
            frame_mask = F.pad(frame_mask, (0, n_patches * self.patch_frames - n_frames))
            patch_mask = frame_mask.view(frame_mask.shape[0], n_patches, self.patch_frames).any(-1)
        return tokens, patch_mask

    def spec_augment(self, spec: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """Mask random mel bands and time spans of spec (B, M, F) with each row's mean over its real frames."""
        B, M, n_frames = spec.shape
        dev = spec.device
        real = frame_mask if frame_mask is not None else torch.ones(B, n_frames, dtype=torch.bool, device=dev)
        n_real = real.sum(-1, keepdim=True).clamp_min(1)  # (B, 1)
        fill = (spec * real[:, None, :]).sum((1, 2)) / (n_real[:, 0] * M)  # (B,)
        hit = torch.zeros(B, M, n_frames, dtype=torch.bool, device=dev)

        def spans(count: int, max_width: torch.Tensor, extent: torch.Tensor, size: int) -> torch.Tensor:
            """(B, size) bool: `count` spans per row of width U[0, max_width] inside [0, extent)."""
            out = torch.zeros(B, size, dtype=torch.bool, device=dev)
            pos = torch.arange(size, device=dev)[None, :]
            for _ in range(count):
                width = (torch.rand(B, 1, device=dev) * (max_width + 1)).floor()
                start = (torch.rand(B, 1, device=dev) * (extent - width).clamp_min(0)).floor()
                out |= (pos >= start) & (pos < start + width)
            return out

        if self.freq_masks:
            width = torch.full((B, 1), float(min(self.freq_mask_width, M)), device=dev)
            hit |= spans(self.freq_masks, width, torch.full((B, 1), float(M), device=dev), M)[:, :, None]
        if self.time_masks:
            width = torch.minimum(torch.full((B, 1), float(self.time_mask_width), device=dev), n_real / 5).floor()
            hit |= spans(self.time_masks, width, n_real.float(), n_frames)[:, None, :]
        hit &= real[:, None, :]  # padded frames stay 0
        return torch.where(hit, fill[:, None, None].to(spec.dtype), spec)
