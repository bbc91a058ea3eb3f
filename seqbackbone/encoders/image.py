"""Image encoders: images (B, C, H, W) -> tokens (B, L, d_model).

    PatchEncoder   Vim-style: timm PatchEmbed, absolute position embeddings (resampled with timm's
                   resample_abs_pos_embed when the input size differs from img_size), class token in the middle of
                   the sequence (Vim), first, or none
    PixelEncoder   one token per pixel in raster order (sequential MNIST): (B, C, H, W) -> (B, H * W, D)

Dimension glossary: B batch, C channels, H/W image size, gh/gw patch grid, N = gh * gw patches, D d_model.
"""

from __future__ import annotations

import torch
from torch import nn

CLS_POSITIONS = ("middle", "first", None)


def check_image(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Validate an image batch (B, C, H, W) of floats with C == in_chans."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"image models take a tensor (B, C, H, W), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"image models take float images (B, C, H, W) normalised with the model's mean/std, got dtype {x.dtype}"
        )
    if x.ndim != 4:
        raise ValueError(
            f"image models take images of shape (B, C, H, W), got shape {tuple(x.shape)}"
            + (" (add the channel dimension: x[:, None])" if x.ndim == 3 else "")
        )
    if x.shape[1] != in_chans:
        raise ValueError(f"image has {x.shape[1]} channels, the model expects in_chans={in_chans}")
    return x


class PatchEncoder(nn.Module):
    """Patches + position embeddings + optional class token: (B, C, H, W) -> (B, N (+1), D), mask None.

    Args:
        img_size: the size the position embeddings are laid out for; other sizes (multiples of patch_size) resample.
        cls_token: "middle" (Vim: inserted at index N // 2), "first", or None.
    """

    def __init__(
        self,
        d_model: int,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        cls_token: str | None = "middle",
        pos_embed: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if cls_token not in CLS_POSITIONS:
            raise ValueError(f"cls_token must be one of {CLS_POSITIONS}, got {cls_token!r}")
        # timm (and the torchvision it loads) costs seconds to import: only image models pay for it
        from timm.layers import PatchEmbed, to_2tuple, trunc_normal_

        dd = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.in_chans = in_chans
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.cls_position = cls_token
        self.patch_embed = PatchEmbed(
            img_size=self.img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=d_model,
            strict_img_size=False, output_fmt="NHWC", **dd,
        )
        self.grid_size = self.patch_embed.grid_size
        n = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.empty(1, n, d_model, **dd)) if pos_embed else None
        self.cls_token = nn.Parameter(torch.empty(1, 1, d_model, **dd)) if cls_token is not None else None
        for p in (self.pos_embed, self.cls_token):
            if p is not None:
                trunc_normal_(p, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {n for n in ("pos_embed", "cls_token") if getattr(self, n) is not None}

    def cls_index(self, num_tokens: int) -> int | None:
        """Index of the class token in a sequence of num_tokens (patches + class token)."""
        if self.cls_position is None:
            return None
        return 0 if self.cls_position == "first" else (num_tokens - 1) // 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if mask is not None:
            raise ValueError("image models take no mask (every patch is real)")
        x = check_image(x, self.in_chans)
        H, W = x.shape[-2:]
        if H % self.patch_size[0] or W % self.patch_size[1]:
            raise ValueError(f"image size {(H, W)} must be a multiple of the patch size {self.patch_size}")
        t = self.patch_embed(x)  # (B, gh, gw, D)
        B, gh, gw, D = t.shape
        t = t.reshape(B, gh * gw, D)  # raster order
        if self.pos_embed is not None:
            pos = self.pos_embed
            if (gh, gw) != tuple(self.grid_size):
                from timm.layers import resample_abs_pos_embed

                pos = resample_abs_pos_embed(pos, new_size=[gh, gw], old_size=list(self.grid_size), num_prefix_tokens=0)
            t = t + pos
        if self.cls_token is not None:
            i = self.cls_index(gh * gw + 1)
            t = torch.cat([t[:, :i], self.cls_token.expand(B, -1, -1), t[:, i:]], dim=1)  # (B, N + 1, D)
        return t, None


class PixelEncoder(nn.Module):
    """One token per pixel: (B, C, H, W) -> raster sequence (B, H * W, C) -> Linear -> (B, H * W, D), mask None."""

    def __init__(
        self,
        d_model: int,
        in_chans: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.in_chans = in_chans
        self.proj = nn.Linear(in_chans, d_model, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        if mask is not None:
            raise ValueError("image models take no mask (every pixel is real)")
        x = check_image(x, self.in_chans)
        seq = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H * W, C)
        return self.proj(seq.to(self.proj.weight.dtype)), None
