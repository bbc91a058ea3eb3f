"""spoken-digits: classify recordings from the raw waveform.

Data: a folder of `{label}_{speaker}_{index}.wav` files (the Free Spoken Digit Dataset; takes 0-4 are the test
set) or one sub-folder per label (see `seqbackbone.data.audio`). Recordings are resampled to the model's sample rate,
kept whole (no cropping) and batched by similar length with a mask over the padding (padded up to one of a few
bucket lengths, `pad_bucket`, so that GPU kernels see few distinct shapes). Each recording is scaled to a
peak of 1 (speakers were recorded at different levels); training plays each recording at 0.9, 1 or 1.1 times its
speed and adds a random gain and faint white noise.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from seqbackbone.data import load_audio_files, split_audio_files

from .base import ClassifyTask, TaskData, TaskInputError, register_task
from .batching import ListDataset, pad_collate, padded_length, split_indices
from .dna_classify import encode_labels, label_order


def model_sample_rate(name: str, overrides: dict[str, Any]) -> int | None:
    """The sample rate a registered audio model expects (its pretrained_cfg), with `overrides` applied."""
    if overrides.get("sample_rate"):
        return int(overrides["sample_rate"])
    import torch

    import seqbackbone

    with torch.device("meta"):  # only the config is needed: no memory, no initialisation
        model = seqbackbone.create_model(name, **overrides)
    return (getattr(model, "pretrained_cfg", None) or {}).get("sample_rate")


def speed_perturb(batch: dict[str, torch.Tensor], speeds: list[float], generator: torch.Generator,
                  bucket: int | None = None) -> dict[str, torch.Tensor]:
    """Play each recording of the batch at a speed drawn from `speeds` (resampling: 1.1 is 10% faster and
    shorter, pitch included, as in Kaldi's 3-way speed perturbation); the whole recording is kept, and the batch is
    re-padded with a new mask (to a bucket length when `bucket` is set, see batching.bucket_length).
    x (B, T), mask (B, T) -> x (B, T'), mask (B, T')."""
    if all(float(v) == 1.0 for v in speeds):
        return batch
    import torchaudio.functional as AF

    x, mask = batch["x"], batch["mask"]
    picks = torch.randint(0, len(speeds), (x.shape[0],), generator=generator).tolist()
    lengths = mask.sum(1).tolist()
    waves = []
    for i, (k, n) in enumerate(zip(picks, lengths, strict=True)):
        wave = x[i, : int(n)]
        speed = float(speeds[k])
        if speed != 1.0:  # read as if recorded at speed * rate, then brought back to the rate
            wave = AF.resample(wave, int(round(100 * speed)), 100)
        waves.append(wave)
    longest = padded_length(max(len(w) for w in waves), bucket)
    out = x.new_zeros(len(waves), longest)
    new_mask = torch.zeros(len(waves), longest, dtype=torch.bool, device=x.device)
    for i, w in enumerate(waves):
        out[i, : len(w)] = w
        new_mask[i, : len(w)] = True
    return {**batch, "x": out, "mask": new_mask}


def normalize_peak(wave: torch.Tensor) -> torch.Tensor:
    return wave / wave.abs().max().clamp_min(1e-4)


@register_task
class SpokenDigits(ClassifyTask):
    name = "spoken-digits"
    description = "audio classification from raw waveforms: folder of {label}_{speaker}_{index}.wav or label folders"
    defaults: dict[str, Any] = {
        "model": "mamba_audio_cls_small",
        "model_kwargs": {"drop_rate": 0.3},
        "sample_rate": None,  # default: the model's
        "epochs": 40,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 0.1,
        "augment": True,
        "gain_db": 6.0,  # random gain in +-gain_db while training
        "noise_snr_db": 30.0,  # white noise at this signal-to-noise ratio while training
        "speeds": [0.9, 1.0, 1.1],  # speed perturbation while training
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
        rate = cfg.get("sample_rate") or model_sample_rate(cfg["model"], cfg.get("model_kwargs") or {})
        cfg["sample_rate"] = rate
        names = (cfg.get("task_info") or {}).get("labels") or label_order([f.label for f in train_files])
        try:
            test = load_audio_files(test_files, rate)
            train = load_audio_files(train_files, rate) if not cfg.get("evaluation_only") else None
        except ValueError as err:
            raise TaskInputError(f"{folder}: {err}") from None
        test_set = ListDataset([normalize_peak(w) for w in test.waves], encode_labels(test.labels, names, str(folder)))
        train_set = val_set = None
        if train is not None:
            waves = [normalize_peak(w) for w in train.waves]
            labels = encode_labels(train.labels, names, str(folder))
            keep, held = split_indices(len(waves), float(cfg.get("val_fraction", 0.1)), int(cfg.get("seed", 0)))
            train_set = ListDataset([waves[i] for i in keep], [labels[i] for i in keep])
            val_set = ListDataset([waves[i] for i in held], [labels[i] for i in held]) if held else None
        info = {"labels": names, "sample_rate": rate, "n_test": len(test_set),
                "n_skipped_files": len(test.skipped) + (len(train.skipped) if train else 0)}
        if train_set is not None:
            info.update(n_train=len(train_set), n_val=len(val_set) if val_set else 0)
        collate = partial(pad_collate, bucket=int(cfg.get("pad_bucket") or 0))
        return TaskData(train_set if train_set is not None else test_set, val_set, test_set, collate,
                        train_lengths=(train_set or test_set).lengths(), eval_lengths=lambda ds: ds.lengths(),
                        info=info)

    def model_overrides(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        out = super().model_overrides(cfg, data)
        if cfg.get("sample_rate"):
            out["sample_rate"] = int(cfg["sample_rate"])
        return out

    def augment(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        if not self.cfg.get("augment", True):
            return batch
        batch = speed_perturb(batch, self.cfg.get("speeds") or [1.0], generator, int(self.cfg.get("pad_bucket") or 0))
        x, mask = batch["x"], batch["mask"]
        b = x.shape[0]
        gain_db = (torch.rand(b, 1, generator=generator) * 2 - 1) * float(self.cfg.get("gain_db", 6.0))
        noise = torch.randn(x.shape, generator=generator)
        rms = (x.square().sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp_min(1)).sqrt().cpu()
        noise = noise * rms * 10 ** (-float(self.cfg.get("noise_snr_db", 30.0)) / 20)
        x = (x * 10 ** (gain_db / 20).to(x.device) + noise.to(x.device)) * mask
        return {**batch, "x": x}
