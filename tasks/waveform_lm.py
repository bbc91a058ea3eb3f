"""waveform-lm: next-sample prediction on raw audio as 8-bit mu-law codes (SaShiMi-style), in bits per sample.

Data: a folder of recordings in either layout `seqbackbone.data.audio` reads (flat `{label}_{speaker}_{index}.wav`,
e.g. the Free Spoken Digit Dataset, whose takes 0-4 are the test set; or label folders, optionally under train/ and
test/). Recordings are resampled to the model's sample rate. A `val_fraction` of the training recordings is held out
to pick the best checkpoint.

Training: each epoch visits every training recording once, as a random crop of `seq_len` samples (the whole
recording when shorter; the crop start comes from (seed, epoch, index)). Scoring: whole recordings, batched by length
with a mask over the padding; every sample but the first of its recording is predicted from all the samples before
it, and the metric is the mean negative log-likelihood of the true mu-law code in bits (8 would be a uniform guess).
results.json also reports the order-0 baseline: the code frequencies of the training recordings (add-one
smoothing), scored on the same test samples.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from seqbackbone.data import load_audio_files, split_audio_files

from .base import EvalContext, Task, TaskData, TaskInputError, register_task
from .batching import ListDataset, pad_collate, split_indices
from .spoken_digits import model_sample_rate, normalize_peak

LN2 = math.log(2.0)


class RandomCrops(Dataset):
    """Item i of epoch e: a crop of `length` samples of waves[i] (all of it when shorter), starting at a position
    drawn from (seed, e, i). Returns (crop (<= length,), 0)."""

    def __init__(self, waves: list[torch.Tensor], length: int, seed: int) -> None:
        if length < 2:
            raise ValueError(f"seq_len must be at least 2 samples, got {length}")
        self.waves, self.length, self.seed, self.epoch = waves, length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        wave = self.waves[i]
        if len(wave) <= self.length:
            return wave, 0
        start = int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, len(wave) - self.length + 1))
        return wave[start : start + self.length], 0

    def lengths(self) -> list[int]:
        return [min(len(w), self.length) for w in self.waves]


def mu_law_codes(wave: torch.Tensor, channels: int = 256) -> torch.Tensor:
    import torchaudio.functional as AF

    return AF.mu_law_encoding(wave.float().clamp(-1.0, 1.0), channels)


@register_task
class WaveformLM(Task):
    name = "waveform-lm"
    description = "next-sample prediction on raw audio (8-bit mu-law), bits per sample: folder of wav files"
    metric = "bits_per_sample"
    greater_is_better = False
    defaults: dict[str, Any] = {
        "model": "mamba_wave_lm_small",
        "model_kwargs": {},
        "sample_rate": None,  # default: the model's
        "seq_len": 4096,  # training crop, in samples
        "normalize_peak": False,  # scale each recording to a peak of 1 (off: the codes of the recordings as made)
        "epochs": 40,
        "batch_size": 32,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "pad_bucket": 256,  # pad batches to a few lengths (multiples of this): few shapes for GPU kernels; 0: off
    }

    def load_data(self, cfg: dict[str, Any]) -> TaskData:
        folder = Path(cfg["data"])
        try:
            train_files, test_files = split_audio_files(folder)
        except ValueError as err:
            raise TaskInputError(str(err)) from None
        if not test_files:
            raise TaskInputError(f"{folder} yields no test recordings (takes 0-4, or a test/ folder)")
        if not train_files and not cfg.get("evaluation_only"):
            raise TaskInputError(f"{folder} yields no training recordings")
        rate = cfg.get("sample_rate") or model_sample_rate(cfg["model"], cfg.get("model_kwargs") or {})
        if not rate:
            raise TaskInputError(f"model {cfg['model']} has no sample_rate; pass --set sample_rate=RATE")
        cfg["sample_rate"] = int(rate)
        prep = normalize_peak if cfg.get("normalize_peak") else (lambda w: w)
        collate = partial(pad_collate, bucket=int(cfg.get("pad_bucket") or 0))
        try:
            test = load_audio_files(test_files, int(rate))
            train = load_audio_files(train_files, int(rate)) if not cfg.get("evaluation_only") else None
        except ValueError as err:
            raise TaskInputError(f"{folder}: {err}") from None
        test_waves = [prep(w) for w in test.waves if len(w) >= 2]
        test_set = ListDataset(test_waves, [0] * len(test_waves))
        info: dict[str, Any] = {"sample_rate": int(rate), "n_test": len(test_set),
                                "test_samples_scored": sum(len(w) - 1 for w in test_waves)}
        if train is None:
            self._train_waves: list[torch.Tensor] = []
            return TaskData(test_set, None, test_set, collate, eval_lengths=lambda ds: ds.lengths(), info=info)
        waves = [prep(w) for w in train.waves if len(w) >= 2]
        keep, held = split_indices(len(waves), float(cfg.get("val_fraction", 0.1)), int(cfg.get("seed", 0)))
        self._train_waves = [waves[i] for i in keep]
        train_set = RandomCrops(self._train_waves, int(cfg["seq_len"]), int(cfg.get("seed", 0)))
        val_set = ListDataset([waves[i] for i in held], [0] * len(held)) if held else None
        info.update(n_train=len(train_set), n_val=len(held), train_samples=sum(len(w) for w in self._train_waves))
        return TaskData(train_set, val_set, test_set, collate, train_lengths=train_set.lengths(),
                        eval_lengths=lambda ds: ds.lengths(), info=info)

    def model_overrides(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        return {"sample_rate": int(cfg["sample_rate"])} if cfg.get("sample_rate") else {}

    @staticmethod
    def _nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position NLL in nats (B, T) and the bool (B, T) of positions that have a next real sample."""
        x, mask = batch["x"], batch["mask"]
        logits = model(x, mask=mask)  # (B, T, 256); position t predicts the code of sample t + 1
        core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        target = core.targets(x, mask)  # (B, T), -100 where there is no next real sample
        nll = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100, reduction="none")
        return nll, target != -100

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        nll, valid = self._nll(model, batch)
        return nll.sum() / valid.sum().clamp_min(1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, float]:
        nats, count = 0.0, 0
        for batch in ctx.batches(dataset):
            with ctx.autocast():
                nll, valid = self._nll(model, batch)
            nats += float(nll[valid].sum())
            count += int(valid.sum())
        mean = nats / max(count, 1)
        return {"loss": mean, "bits_per_sample": mean / LN2, "scored_samples": float(count)}

    def extra_results(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        """Order-0 baseline: training code frequencies (add-one) scored on the test samples the model scores."""
        if not self._train_waves:
            return {}
        counts = torch.ones(256, dtype=torch.float64)
        for w in self._train_waves:
            counts += torch.bincount(mu_law_codes(w), minlength=256).double()
        logp = (counts / counts.sum()).log2()
        bits, n = 0.0, 0
        for w, _ in data.test:
            codes = mu_law_codes(w)[1:]
            bits -= float(logp[codes].sum())
            n += len(codes)
        return {"order0_bits_per_sample": bits / max(n, 1)}
