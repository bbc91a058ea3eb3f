"""The one model class: encoder -> MambaBackbone -> head, with timm's model interface.

    x --encoder--> tokens (B, L, D), mask (B, L) --backbone--> hidden (B, L, D) --head--> output

Inputs per modality (what `forward(x, mask=None)` takes):
    audio     float waveforms (B, T) in [-1, 1] at pretrained_cfg["sample_rate"]; mask (B, T) bool marks real samples
              (right padding). Another rate: forward(x, mask, sample_rate=16000) resamples with torchaudio.
    dna       token ids (B, L) long from DnaTokenizer; without a mask, [PAD] (id 0) positions are padding.
    image     float images (B, C, H, W) normalised with pretrained_cfg["mean"] / ["std"].
    features  float features (B, L, C); mask (B, L) bool.

Outputs: classification (B, num_classes); token_classification (B, L, num_classes); lm next-token logits
(B, L, vocab_size). `model.targets(x, mask)` gives the matching LM targets (B, L) long: the next token (DNA id or
mu-law code) at each position, -100 where there is none (last position, padding); `model.lm_loss(x, mask)` is the
mean cross entropy over them.

Language models expose what a decoding loop needs (seqbackbone.generation uses these names):
    model.encoder.embedding      nn.Embedding (vocab_size, D) of token ids / mu-law codes
    model.encoder.embed(ids)     (B, L) long -> (B, L, D)
    model.backbone               causal MambaBackbone: forward(x, cache=...) prefill, step(x_t, cache)
    model.head(hidden)           (..., D) -> logits (..., vocab_size)
    model.head.weight            the same Parameter as model.encoder.embedding.weight (tied)
    model.vocab_size             256 for mu-law waveform models, DnaTokenizer.vocab_size for DNA
    model.is_lm                  True when the head is the tied LM head
    model.pretrained_cfg["modality"] == "audio" means the prompt/result are waveforms (mu-law codes inside)

DNA reverse complement (RC):
    rc_aug=True (classification only): in training mode each sequence is replaced by its RC with probability 1/2.
        For language models call seqbackbone.encoders.rc_augment(ids, mask) on the batch before targets().
    rc_conjoin=True: in eval mode the output is the mean of the outputs for a sequence and its RC (the logits are
        averaged); forward(x, mask, conjoin=True/False) overrides it per call. Padding and specials stay in place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import MambaBackbone
from .encoders import (
    DnaEncoder,
    FrameEncoder,
    LinearEncoder,
    MelEncoder,
    MuLawEncoder,
    PatchEncoder,
    PixelEncoder,
    check_token_ids,
    rc_augment,
    reverse_complement_ids,
)
from .heads import POOLINGS, ClassifierHead, LMHead, TokenClassifierHead
from .tokenizer import PAD_ID, VOCAB_SIZE

MODALITIES = ("audio", "dna", "image", "features")
TASKS = ("classification", "token_classification", "lm")
# encoder kind -> modality it serves; the first of each modality is its default
ENCODERS = {
    "frames": "audio", "mulaw": "audio", "mel": "audio",
    "dna": "dna",
    "patch": "image", "pixel": "image",
    "linear": "features",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SequenceModelConfig:
    """Everything that shapes a SequenceModel (saved as config.json's "config").

    Fields unused by the chosen encoder are ignored (e.g. img_size for DNA). Derived values (the default encoder,
    vocab_size, sample_rate, input_length, mean/std) are filled in by __post_init__.
    """

    modality: str
    task: str = "classification"
    encoder: str | None = None  # frames | mulaw | mel (audio), dna, patch | pixel (image), linear (features)
    # backbone
    d_model: int = 128
    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int | str = "auto"
    bidirectional: str | None = None  # None (causal), "add" or "tied"
    rms_norm: bool = True
    residual_in_fp32: bool = True
    # head
    num_classes: int = 2
    pooling: str = "mean"  # mean | max | last | cls
    drop_rate: float = 0.0
    vocab_size: int | None = None  # token vocabulary: DnaTokenizer's (9) or mu-law codes (256)
    # audio
    sample_rate: int | None = None  # 8000 for audio models
    frame_size: int = 32  # learned frames: samples per token
    n_conv: int = 2
    n_mels: int = 64
    n_fft: int = 256
    hop_length: int = 80
    patch_frames: int = 2  # log-mel frames per token
    # image and features
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    cls_token: str | None = "middle"  # middle (Vim) | first | None
    pos_embed: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # dna
    rc_aug: bool = False
    rc_conjoin: bool = False
    # typical input length (samples, tokens or steps), reported in pretrained_cfg["input_size"]
    input_length: int | None = None
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.encoder is None:
            self.encoder = next(k for k, m in ENCODERS.items() if m == self.modality)
        if ENCODERS.get(self.encoder) != self.modality:
            kinds = [k for k, m in ENCODERS.items() if m == self.modality]
            raise ValueError(
                f"encoder {self.encoder!r} does not serve modality {self.modality!r}; expected one of {kinds}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "cls" and not (self.encoder == "dna" or (self.encoder == "patch" and self.cls_token)):
            raise ValueError(
                "pooling='cls' needs a class token: encoder='patch' with cls_token set, or DNA ids that start with "
                "[CLS] (DnaTokenizer(add_special_tokens=True))"
            )
        if self.bidirectional not in (None, "add", "tied"):
            raise ValueError(f"bidirectional must be None, 'add' or 'tied', got {self.bidirectional!r}")
        if self.task == "lm":
            if self.encoder not in ("dna", "mulaw"):
                raise ValueError(f"task='lm' needs a token encoder ('dna' or 'mulaw'), got encoder={self.encoder!r}")
            if self.bidirectional is not None:
                raise ValueError(
                    f"task='lm' predicts the next token and needs a causal backbone (bidirectional=None), "
                    f"got bidirectional={self.bidirectional!r}"
                )
        if self.rc_aug and (self.modality != "dna" or self.task != "classification"):
            raise ValueError(
                "rc_aug applies to DNA sequence classification only; for DNA language models call "
                "seqbackbone.encoders.rc_augment(ids, mask) on the batch before computing targets"
            )
        if self.rc_conjoin and (self.modality != "dna" or self.task != "classification"):
            raise ValueError("rc_conjoin applies to DNA sequence classification only (it averages sequence outputs)")
        if self.encoder == "mulaw":
            self.vocab_size = self.vocab_size or 256
        elif self.encoder == "dna":
            self.vocab_size = self.vocab_size or VOCAB_SIZE
        if self.task == "lm":
            self.num_classes = self.vocab_size
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.modality == "audio" and self.sample_rate is None:
            self.sample_rate = 8000
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)  # from JSON
        if self.modality == "image":
            if self.mean is None or self.std is None:
                self.mean = IMAGENET_MEAN if self.in_chans == 3 else (0.5,) * self.in_chans
                self.std = IMAGENET_STD if self.in_chans == 3 else (0.5,) * self.in_chans
            self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.input_length is None:
            self.input_length = {"audio": self.sample_rate or 8000, "dna": 1024, "features": 256}.get(self.modality)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SequenceModelConfig:
        """Build from a dict (config.json); unknown keys raise, naming the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; valid fields: {sorted(names)}")
        return cls(**d)

    def input_size(self) -> tuple[int, ...]:
        if self.modality == "image":
            h, w = (self.img_size, self.img_size) if isinstance(self.img_size, int) else self.img_size
            return (self.in_chans, h, w)
        if self.modality == "features":
            return (self.input_length, self.in_chans)
        return (self.input_length,)

    def pretrained_cfg(self, name: str | None = None) -> dict[str, Any]:
        """timm-style description of the model's input and output."""
        cfg: dict[str, Any] = {
            "architecture": name,
            "modality": self.modality,
            "task": self.task,
            "num_classes": self.num_classes,
            "input_size": self.input_size(),
            "encoder": self.encoder,
            "bidirectional": self.bidirectional,
            "classifier": "head" if self.task == "lm" else "head.fc",
        }
        if self.modality == "audio":
            cfg["sample_rate"] = self.sample_rate
            cfg["input_dtype"] = "float32 waveform in [-1, 1]"
        if self.modality == "dna":
            cfg.update(tokenizer="DnaTokenizer", pad_id=PAD_ID, input_dtype="int64 token ids")
        if self.vocab_size is not None:
            cfg["vocab_size"] = self.vocab_size
        if self.encoder == "mulaw":
            cfg["mu_law_channels"] = self.vocab_size
        if self.modality == "image":
            cfg.update(mean=self.mean, std=self.std, interpolation="bicubic", crop_pct=1.0 if self.in_chans == 1
                       else 0.9, crop_mode="center", first_conv="encoder.patch_embed.proj"
                       if self.encoder == "patch" else "encoder.proj")
        return cfg


def build_encoder(cfg: SequenceModelConfig, device: Any = None, dtype: torch.dtype | None = None) -> nn.Module:
    dd = {"device": device, "dtype": dtype, **cfg.encoder_kwargs}
    d = cfg.d_model
    if cfg.encoder == "frames":
        return FrameEncoder(d, frame_size=cfg.frame_size, n_conv=cfg.n_conv, sample_rate=cfg.sample_rate, **dd)
    if cfg.encoder == "mulaw":
        return MuLawEncoder(d, quantization_channels=cfg.vocab_size, sample_rate=cfg.sample_rate, **dd)
    if cfg.encoder == "mel":
        return MelEncoder(d, sample_rate=cfg.sample_rate, n_mels=cfg.n_mels, n_fft=cfg.n_fft,
                          hop_length=cfg.hop_length, patch_frames=cfg.patch_frames, **dd)
    if cfg.encoder == "dna":
        return DnaEncoder(d, vocab_size=cfg.vocab_size, **dd)
    if cfg.encoder == "patch":
        return PatchEncoder(d, img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                            cls_token=cfg.cls_token, pos_embed=cfg.pos_embed, **dd)
    if cfg.encoder == "pixel":
        return PixelEncoder(d, in_chans=cfg.in_chans, **dd)
    if cfg.encoder == "linear":
        return LinearEncoder(d, in_chans=cfg.in_chans, **dd)
    raise ValueError(f"unknown encoder {cfg.encoder!r}; expected one of {sorted(ENCODERS)}")


def build_head(
    cfg: SequenceModelConfig, encoder: nn.Module, device: Any = None, dtype: torch.dtype | None = None
) -> nn.Module:
    if cfg.task == "lm":
        return LMHead(encoder.embedding)
    if cfg.task == "token_classification":
        return TokenClassifierHead(cfg.d_model, cfg.num_classes, drop_rate=cfg.drop_rate, device=device, dtype=dtype)
    cls_position = getattr(encoder, "cls_position", None) or "first"
    return ClassifierHead(cfg.d_model, cfg.num_classes, pool=cfg.pooling, cls_position=cls_position,
                          drop_rate=cfg.drop_rate, device=device, dtype=dtype)


class SequenceModel(nn.Module):
    """encoder -> MambaBackbone -> head (see the module docstring for inputs, outputs and LM hooks).

    Any encoder `encoder(x, mask=None) -> (tokens (B, L, D), mask)` and head `head(hidden, mask) -> output` plug in;
    `config` is only needed to rebuild the model from a saved folder.
    """

    def __init__(
        self,
        encoder: nn.Module,
        backbone: nn.Module,
        head: nn.Module,
        pretrained_cfg: dict[str, Any] | None = None,
        config: SequenceModelConfig | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = backbone
        self.head = head
        self.config = config
        self.pretrained_cfg: dict[str, Any] = dict(pretrained_cfg or {})
        self.num_features: int = getattr(backbone, "num_features", None) or backbone.d_model
        self.rc_aug = bool(config.rc_aug) if config is not None else False
        self.rc_conjoin = bool(config.rc_conjoin) if config is not None else False

    @classmethod
    def from_config(
        cls,
        config: SequenceModelConfig,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SequenceModel:
        encoder = build_encoder(config, device, dtype)
        backbone = MambaBackbone(
            config.d_model, config.n_layer, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand,
            dt_rank=config.dt_rank, bidirectional=config.bidirectional, rms_norm=config.rms_norm,
            residual_in_fp32=config.residual_in_fp32, device=device, dtype=dtype,
        )
        head = build_head(config, encoder, device, dtype)
        return cls(encoder, backbone, head, pretrained_cfg=config.pretrained_cfg(name), config=config)

    # ---- timm interface ----

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    @property
    def num_classes(self) -> int:
        n = getattr(self.head, "num_classes", None)
        return int(n) if n is not None else 0

    @property
    def vocab_size(self) -> int | None:
        return getattr(self.encoder, "vocab_size", None)

    @property
    def is_lm(self) -> bool:
        return isinstance(self.head, LMHead)

    def get_classifier(self) -> nn.Module:
        return self.head if isinstance(self.head, LMHead) else getattr(self.head, "fc", self.head)

    def reset_classifier(self, num_classes: int, pooling: str | None = None) -> None:
        """A fresh classifier for num_classes (0: forward returns pooled / per-token features)."""
        p = next(self.parameters())
        if isinstance(self.head, LMHead):
            if num_classes != 0:
                raise ValueError(
                    f"the LM head is tied to the {self.head.num_classes}-token embedding; reset_classifier only takes "
                    f"0 here (features), got {num_classes}. For a classifier, create a classification model with "
                    "pretrained=<this model's folder>: the encoder and backbone load and the head starts fresh"
                )
            self.head = TokenClassifierHead(self.num_features, 0, device=p.device, dtype=p.dtype)
        elif isinstance(self.head, ClassifierHead):
            self.head.reset(num_classes, pool=pooling, device=p.device, dtype=p.dtype)
        elif hasattr(self.head, "reset"):
            self.head.reset(num_classes, device=p.device, dtype=p.dtype)
        else:
            raise TypeError(f"head {type(self.head).__name__} has no reset(num_classes); replace model.head instead")
        self.pretrained_cfg["num_classes"] = num_classes
        if self.config is not None:
            self.config.num_classes = num_classes
            if isinstance(self.head, TokenClassifierHead) and self.config.task == "lm":
                self.config.task = "token_classification"
                self.pretrained_cfg["task"] = "token_classification"
            if pooling is not None:
                self.config.pooling = pooling

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters to keep out of weight decay: every A_log and D (and reverse twins), norm weights
        and biases, position embeddings and the class token."""
        names: set[str] = set()
        for prefix, part in (("encoder", self.encoder), ("backbone", self.backbone), ("head", self.head)):
            if hasattr(part, "no_weight_decay"):
                names |= {f"{prefix}.{n}" for n in part.no_weight_decay()}
        for module_name, module in self.named_modules():
            is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("Norm")
            for pname, param in module.named_parameters(recurse=False):
                if is_norm or getattr(param, "_no_weight_decay", False):
                    names.add(f"{module_name}.{pname}" if module_name else pname)
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    # ---- forward ----

    def _encode(
        self, x: torch.Tensor, mask: torch.Tensor | None, sample_rate: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if sample_rate is None:
            return self.encoder(x, mask)
        if not hasattr(self.encoder, "sample_rate"):
            raise TypeError(
                f"sample_rate={sample_rate} was given but this model's encoder ({type(self.encoder).__name__}) "
                "does not take audio; sample_rate applies to audio models only"
            )
        return self.encoder(x, mask, sample_rate=sample_rate)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_rate: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw input -> (hidden (B, L, D), token mask (B, L) bool or None)."""
        tokens, tmask = self._encode(x, mask, sample_rate)
        return self.backbone(tokens, tmask), tmask

    def forward_intermediates(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
        sample_rate: int | None = None,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm-style per-layer features (B, L, D) of the backbone on the encoded input (see
        MambaBackbone.forward_intermediates for indices / norm / stop_early)."""
        tokens, tmask = self._encode(x, mask, sample_rate)
        return self.backbone.forward_intermediates(
            tokens, tmask, indices=indices, norm=norm, stop_early=stop_early, intermediates_only=intermediates_only
        )

    def forward_head(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        """hidden (B, L, D) and token mask -> head output (or its input features when pre_logits)."""
        return self.head(x, mask, pre_logits=True) if pre_logits else self.head(x, mask)

    def _forward_once(self, x: torch.Tensor, mask: torch.Tensor | None, sample_rate: int | None) -> torch.Tensor:
        hidden, tmask = self.forward_features(x, mask, sample_rate)
        return self.forward_head(hidden, tmask)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        sample_rate: int | None = None,
        conjoin: bool | None = None,
    ) -> torch.Tensor:
        """Raw input of the model's modality (see the module docstring) -> task output."""
        if self.training and self.rc_aug:
            x = rc_augment(x, mask)
        if conjoin is None:
            conjoin = self.rc_conjoin and not self.training
        if not conjoin:
            return self._forward_once(x, mask, sample_rate)
        if not isinstance(self.encoder, DnaEncoder):
            raise ValueError("conjoin=True (reverse-complement averaging) applies to DNA models only")
        if self.is_lm or (self.config is not None and self.config.task == "token_classification"):
            raise ValueError("conjoin=True averages sequence-level outputs; this model predicts per token")
        out = self._forward_once(x, mask, sample_rate)
        out_rc = self._forward_once(reverse_complement_ids(x, mask), mask, sample_rate)
        return (out + out_rc) / 2

    # ---- language models ----

    def targets(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_rate: int | None = None
    ) -> torch.Tensor:
        """Next-token targets (B, L) long for LM outputs (B, L, vocab): the token at t + 1, -100 where none."""
        if not self.is_lm:
            raise ValueError("targets() is for language models (task='lm')")
        if isinstance(self.encoder, MuLawEncoder):
            x, mask = self.encoder.prepare(x, mask, sample_rate)
            ids = self.encoder.encode_targets(x)
        else:
            ids = check_token_ids(x, self.encoder.vocab_size)
            if mask is None:
                mask = ids != self.encoder.pad_id
        nxt = ids.roll(-1, dims=1)
        valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.roll(-1, dims=1) & mask
        valid[:, -1] = False
        return torch.where(valid, nxt, -100)

    def lm_loss(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, sample_rate: int | None = None
    ) -> torch.Tensor:
        """Mean next-token cross entropy (nats per token) over positions that have a next real token."""
        logits = self(x, mask, sample_rate=sample_rate)
        tgt = self.targets(x, mask, sample_rate)
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Continue `prompt` (ids (B, L); waveforms (B, T) for audio LMs) on the recurrent state.

        Returns prompt + new tokens; see seqbackbone.generation.generate for the options.
        """
        from .generation import generate

        return generate(self, prompt, max_new_tokens, temperature, top_k, top_p, generator, **kwargs)

    # ---- saving ----

    def save_pretrained(self, directory: str, model_name: str | None = None) -> None:
        """Write config.json and model.safetensors into directory (atomically; see seqbackbone.hub)."""
        from .hub import save_pretrained

        save_pretrained(self, directory, model_name=model_name)

    def extra_repr(self) -> str:
        name = self.pretrained_cfg.get("architecture")
        return f"name={name!r}" if name else ""
