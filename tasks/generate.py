"""`seqbackbone generate RUN_DIR`: sample from a trained language model into wav files or a FASTA file.

    seqbackbone generate RUN_DIR --num N --length L [--prompt STR_OR_WAV] [--prompt-seconds S]
                         [--temperature T] [--top-k K] [--top-p P] [--seed S] [--device D] [--compile]
                         [--no-progress] --out PATH

RUN_DIR is a run directory (its best model in RUN_DIR/model) or a save_pretrained folder itself. --length is the
length of each output, prompt included: samples for waveform models, bases for DNA models.

Waveform models write 16-bit PCM wav files at the model's sample rate: PATH itself when it ends in .wav and N is 1,
PATH_0.wav ... when it ends in .wav and N > 1, else PATH/sample_0.wav ... in a folder. The prompt is a wav file
(resampled to the model's rate; --prompt-seconds keeps its first S seconds); without one, generation starts from a
single silent sample. DNA models write one FASTA file with N records; the prompt is a string of bases (or a FASTA
file, whose first record is used); without one, generation starts from one random base. DNA models generate only
A, C, G and T.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .base import TaskInputError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `generate` sub-command to an argparse sub-parser group; returns its parser."""
    p = subparsers.add_parser(
        "generate", help="sample wav files or DNA from a trained language model",
        description="Sample from RUN_DIR's language model: wav files (waveform models) or FASTA (DNA models).",
    )
    p.add_argument("run_dir", help="run directory (with model/) or a saved model folder")
    p.add_argument("--num", type=int, default=1, help="number of outputs (default 1)")
    p.add_argument("--length", type=int, required=True,
                   help="length of each output, prompt included: samples (audio) or bases (DNA)")
    p.add_argument("--prompt", help="a wav file (audio models), or a DNA string or FASTA file (DNA models)")
    p.add_argument("--prompt-seconds", type=float, help="audio: keep only the first S seconds of the prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the K most likely tokens only")
    p.add_argument("--top-p", type=float, help="nucleus sampling: the most likely tokens holding mass P")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--compile", action="store_true",
                   help="run the decoding step through torch.compile: on the CPU several times faster per token for "
                        "small models, after a compile of tens of seconds (pays off for long outputs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="wav file or folder (audio), FASTA file (DNA)")
    return p


def _model_dir(run_dir: Path) -> Path:
    if (run_dir / "model").is_dir():
        return run_dir / "model"
    if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
        return run_dir
    raise TaskInputError(f"{run_dir} holds neither model/ (a run directory) nor a saved model")


def _run_settings(run_dir: Path) -> dict[str, Any]:
    """The run's config.json (training settings), or {} for a bare model folder."""
    path = run_dir / "config.json"
    if (run_dir / "model").is_dir() and path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def _audio_prompt(args: argparse.Namespace, rate: int, settings: dict[str, Any]) -> torch.Tensor:
    """(T,) float waveform at `rate`."""
    if args.prompt is None:
        if args.prompt_seconds is not None:
            raise TaskInputError("--prompt-seconds needs --prompt WAV")
        return torch.zeros(1)  # one silent sample to start from
    from seqbackbone.data.audio import read_audio

    path = Path(args.prompt)
    if not path.is_file():
        raise TaskInputError(f"--prompt {args.prompt} is not a file (audio models take a wav prompt)")
    try:
        wave, _ = read_audio(path, rate)
    except ImportError:  # no soundfile (the GPU image has none): 16-bit PCM wav through the standard library
        wave = _read_pcm16_wav(path, rate)
    except ValueError as err:
        raise TaskInputError(f"--prompt: {err}") from None
    if settings.get("normalize_peak"):  # the run trained on peak-normalised recordings
        wave = wave / wave.abs().max().clamp_min(1e-4)
    if args.prompt_seconds is not None:
        if args.prompt_seconds <= 0:
            raise TaskInputError(f"--prompt-seconds must be positive, got {args.prompt_seconds}")
        wave = wave[: max(1, round(args.prompt_seconds * rate))]
    return wave


def _dna_prompt(args: argparse.Namespace, generator: torch.Generator) -> torch.Tensor:
    """(L,) token ids."""
    from seqbackbone.tokenizer import DnaTokenizer

    tok = DnaTokenizer()
    if args.prompt is None:
        if args.prompt_seconds is not None:
            raise TaskInputError("--prompt-seconds applies to audio models only")
        bases = [tok.vocab[c] for c in "ACGT"]
        return torch.tensor([bases[int(torch.randint(4, (1,), generator=generator))]])
    text = args.prompt
    path = Path(text)
    if path.suffix.lower() in (".fa", ".fasta", ".fna", ".gz") or path.is_file():
        if not path.is_file():
            raise TaskInputError(f"--prompt {text} looks like a FASTA file but does not exist")
        from seqbackbone.data import read_fasta

        try:
            text = next(iter(read_fasta(path)))[1]
        except (ValueError, StopIteration) as err:
            raise TaskInputError(f"--prompt {path}: no FASTA record ({err})") from None
    try:
        ids = tok.encode(text.strip())
    except ValueError as err:
        raise TaskInputError(f"--prompt is not a DNA string: {err}") from None
    if len(ids) == 0:
        raise TaskInputError("--prompt holds no bases")
    return torch.as_tensor(ids, dtype=torch.long)


def _wav_paths(out: Path, num: int) -> list[Path]:
    if out.suffix.lower() == ".wav":
        return [out] if num == 1 else [out.with_name(f"{out.stem}_{i}.wav") for i in range(num)]
    return [out / f"sample_{i}.wav" for i in range(num)]


def _read_pcm16_wav(path: Path, rate: int) -> torch.Tensor:
    """A 16-bit PCM wav file as mono float (T,) in [-1, 1] at `rate`, with the standard library's `wave` module."""
    import wave

    try:
        with wave.open(str(path), "rb") as f:
            if f.getsampwidth() != 2:
                raise TaskInputError(f"--prompt {path}: without soundfile only 16-bit PCM wav files can be read")
            channels, file_rate = f.getnchannels(), f.getframerate()
            frames = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as err:
        raise TaskInputError(f"--prompt {path} is not a readable wav file: {err}") from None
    pcm = torch.frombuffer(bytearray(frames), dtype=torch.int16).view(-1, channels)  # (T, channels), little-endian
    audio = pcm.float().mean(dim=1) / 32768
    if audio.numel() == 0:
        raise TaskInputError(f"--prompt {path} holds no samples")
    if file_rate != rate:
        import torchaudio.functional as AF

        audio = AF.resample(audio, file_rate, rate)
    return audio


def _write_wavs(waves: torch.Tensor, rate: int, out: Path) -> list[Path]:
    """16-bit PCM mono wav files, through soundfile or, where it is missing, the standard library's `wave`."""
    paths = _wav_paths(out, waves.shape[0])
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    data = waves.clamp(-1.0, 1.0).float().cpu()
    try:
        import soundfile
    except ImportError:
        soundfile = None
    for wave_row, path in zip(data, paths, strict=True):
        if soundfile is not None:
            soundfile.write(str(path), wave_row.numpy(), rate, subtype="PCM_16")
            continue
        import wave

        pcm = (wave_row * 32767).round().to(torch.int16)
        with wave.open(str(path), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(rate)
            f.writeframes(pcm.numpy().astype("<i2").tobytes())
    return paths


def _write_fasta(ids: torch.Tensor, out: Path, settings: dict[str, Any], args: argparse.Namespace) -> None:
    from seqbackbone.tokenizer import DnaTokenizer

    tok = DnaTokenizer()
    out.parent.mkdir(parents=True, exist_ok=True)
    what = f"temperature={args.temperature} top_k={args.top_k} top_p={args.top_p} seed={args.seed}"
    lines = []
    for i, row in enumerate(ids.cpu()):
        seq = tok.decode(row.tolist())
        lines.append(f">sample_{i} length={len(seq)} {what}")
        lines.extend(seq[j : j + 80] for j in range(0, len(seq), 80))
    out.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    """Runs `seqbackbone generate` with parsed `args`; bad input raises TaskInputError. Returns the exit status."""
    import seqbackbone
    from seqbackbone.generation import generate

    from .train import pick_device

    run_dir = Path(args.run_dir)
    for name in ("num", "length"):
        if getattr(args, name) < 1:
            raise TaskInputError(f"--{name} must be at least 1, got {getattr(args, name)}")
    model_dir = _model_dir(run_dir)
    settings = _run_settings(run_dir)
    device = pick_device(args.device)
    try:
        model = seqbackbone.from_pretrained(str(model_dir)).to(device).eval()
    except (ValueError, OSError) as err:
        raise TaskInputError(f"cannot load the model in {model_dir}: {err}") from None
    if not getattr(model, "is_lm", False):
        raise TaskInputError(f"the model in {model_dir} is not a language model (task 'lm'); it cannot generate")
    cfg = model.pretrained_cfg
    waveform = cfg.get("modality") == "audio"
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    prompt_gen = torch.Generator().manual_seed(args.seed)
    rate = int(cfg.get("sample_rate") or settings.get("sample_rate") or 8000)
    prompt = _audio_prompt(args, rate, settings) if waveform else _dna_prompt(args, prompt_gen)
    if len(prompt) >= args.length:
        unit = "samples" if waveform else "bases"
        raise TaskInputError(f"--length {args.length} must exceed the prompt's {len(prompt)} {unit}")
    suppress = None
    if not waveform:  # genome models score A/C/G/T only: never emit specials or N
        from seqbackbone.tokenizer import DnaTokenizer

        bases = {DnaTokenizer.vocab[c] for c in "ACGT"}
        suppress = [i for i in range(model.vocab_size) if i not in bases]
    try:
        out = generate(
            model, prompt[None].repeat(args.num, 1).to(device), args.length - len(prompt),
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=gen, suppress_tokens=suppress,
            compile=args.compile, progress=not args.no_progress,
        )
    except (ValueError, TypeError) as err:
        raise TaskInputError(str(err)) from None
    target = Path(args.out)
    if waveform:
        paths = _write_wavs(out, rate, target)
        shown = str(paths[0]) if len(paths) == 1 else f"{paths[0]} ... {paths[-1]}"
        print(f"wrote {len(paths)} wav file(s) of {args.length} samples at {rate} Hz: {shown}", file=sys.stderr)
    else:
        _write_fasta(out, target, settings, args)
        print(f"wrote {args.num} sequence(s) of {args.length} bases to {target}", file=sys.stderr)
    return 0
