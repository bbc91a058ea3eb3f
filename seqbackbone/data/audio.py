"""Audio readers: wav files to float waveforms, and folders of labelled recordings.

Two folder layouts are understood:
- flat, one file per recording named `{label}_{speaker}_{index}.wav` (the Free Spoken Digit Dataset);
- one sub-folder per label (`root/{label}/*.wav`), optionally under `root/train/` and `root/test/`.

soundfile is imported inside `read_audio` only, so the rest of the package works where it is not installed.
"""

from __future__ import annotations

import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
_FLAT_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>.+)_(?P<index>\d+)$")


@dataclass(frozen=True)
class AudioFile:
    """One recording: its path, label and, for flat folders, speaker and take index (-1 when unknown)."""

    path: Path
    label: str
    speaker: str = ""
    index: int = -1


@dataclass
class AudioSet:
    """Decoded recordings: waves[i] is a float32 (T_i,) tensor at `sample_rate` with label labels[i]."""

    waves: list[torch.Tensor]
    labels: list[str]
    files: list[AudioFile]
    sample_rate: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Read an audio file as mono float32 in [-1, 1]: returns (wave (T,), rate).

    With `sample_rate`, the wave is resampled to it (torchaudio.functional.resample) and that rate is returned.
    Raises ValueError for an unreadable or empty file.
    """
    try:
        import soundfile
    except ImportError as err:  # the GPU image, for one, ships without it
        raise ImportError("reading audio files needs the soundfile package: pip install soundfile") from err
    path = Path(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (T, channels)
    except Exception as err:  # soundfile raises its own error types (LibsndfileError, RuntimeError)
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} holds no samples")
    wave = torch.from_numpy(data).mean(dim=1)  # (T,) mono
    if sample_rate is not None and sample_rate != rate:
        import torchaudio.functional as AF

        wave = AF.resample(wave, int(rate), int(sample_rate))
        rate = sample_rate
    return wave.contiguous(), int(rate)


def list_audio_folder(root: str | Path) -> list[AudioFile]:
    """The labelled recordings of a folder in either layout (see the module docstring), sorted by path.

    Raises ValueError when `root` is missing or holds no audio file with a recognisable label.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"audio folder {root} does not exist or is not a folder")
    flat = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    files: list[AudioFile] = []
    if flat:
        for p in flat:
            m = _FLAT_NAME.match(p.stem)
            if m is None:
                raise ValueError(
                    f"audio file {p.name} in {root} is not named {{label}}_{{speaker}}_{{index}}.wav "
                    "(or put the files in one sub-folder per label)"
                )
            files.append(AudioFile(p, m["label"], m["speaker"], int(m["index"])))
        return files
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for p in sorted(sub.rglob("*")):
            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES:
                files.append(AudioFile(p, sub.name))
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found in {root}")
    return files


def split_audio_files(
    root: str | Path, test_indices: tuple[int, ...] = (0, 1, 2, 3, 4), test_fraction: float = 0.1
) -> tuple[list[AudioFile], list[AudioFile]]:
    """Train and test lists of a folder: `root/train` + `root/test` when both exist; flat folders put takes
    `test_indices` in test (the official FSDD split); label folders send a fixed `test_fraction` of files, chosen
    by a hash of the file name, to test."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return list_audio_folder(root / "train"), list_audio_folder(root / "test")
    files = list_audio_folder(root)
    if all(f.index >= 0 for f in files):
        test = [f for f in files if f.index in test_indices]
    else:
        test = [f for f in files if zlib.crc32(str(f.path.relative_to(root)).encode()) % 1000 < test_fraction * 1000]
    test_set = set(test)
    return [f for f in files if f not in test_set], test


def load_audio_files(files: list[AudioFile], sample_rate: int | None = None, quiet: bool = False) -> AudioSet:
    """Decode `files` (resampled to `sample_rate` when given). Unreadable or empty files are skipped and counted
    on stderr; raises ValueError when none can be read."""
    waves, labels, kept, skipped = [], [], [], []
    rate = sample_rate
    for f in files:
        try:
            wave, r = read_audio(f.path, sample_rate)
        except ValueError as err:
            skipped.append((f.path, str(err)))
            continue
        if rate is None:
            rate = r
        elif r != rate:  # mixed native rates without a target rate: bring them to the first file's rate
            wave, r = read_audio(f.path, rate)
        waves.append(wave)
        labels.append(f.label)
        kept.append(f)
    if skipped and not quiet:
        print(
            f"skipped {len(skipped)} of {len(files)} audio files (unreadable or empty), first: {skipped[0][1]}",
            file=sys.stderr,
        )
    if not waves:
        raise ValueError(f"none of the {len(files)} audio files could be read")
    return AudioSet(waves, labels, kept, int(rate), skipped)
