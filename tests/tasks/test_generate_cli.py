"""`waveform-lm` and `genome-lm` trained for a few steps on tiny files, then `generate` writes wav files and FASTA."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")

import seqbackbone.tasks.waveform_lm  # noqa: E402, F401  (registers the task)
from seqbackbone.tasks.base import TaskInputError  # noqa: E402
from seqbackbone.tasks.cli import main as cli_main  # noqa: E402
from seqbackbone.tasks.generate import add_parser, run  # noqa: E402

TINY = '{"d_model": 32, "n_layer": 2}'
COMMON = ["--max-steps", "3", "--eval-every", "3", "--batch-size", "4", "--device", "cpu", "--no-progress",
          "--set", f"model_kwargs={TINY}"]


def _generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqbackbone")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["generate", *argv]))


@pytest.fixture(scope="module")
def wave_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A waveform-lm run on ten 600-sample tones at 8 kHz (takes 0-1 test, 5-7 train), 3 steps."""
    root = tmp_path_factory.mktemp("wave")
    rng = np.random.default_rng(0)
    t = np.arange(600) / 8000
    for digit in range(2):
        for take in (0, 1, 5, 6, 7):
            wave = 0.5 * np.sin(2 * np.pi * (220 + 110 * digit + 15 * take) * t) + 0.01 * rng.standard_normal(600)
            soundfile.write(root / f"{digit}_spk_{take}.wav", wave.astype(np.float32), 8000, subtype="PCM_16")
    out = root / "run"
    rc = cli_main(["train", "waveform-lm", "--data", str(root), "--out", str(out), "--model", "mamba_wave_lm_tiny",
                   "--set", "seq_len=256", *COMMON])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def dna_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dna")
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGT"), 3000))
    (root / "genome.fa").write_text(">tiny\n" + "\n".join(seq[i : i + 70] for i in range(0, len(seq), 70)) + "\n")
    out = root / "run"
    rc = cli_main(["train", "genome-lm", "--data", str(root / "genome.fa"), "--out", str(out), "--model",
                   "mamba_dna_lm_tiny", "--set", "seq_len=64", "--set", "eval_len=256", "--set", "markov_max_order=2",
                   *COMMON])
    assert rc == 0
    return out


def test_waveform_lm_reports_bits_per_sample(wave_run: Path) -> None:
    results = json.loads((wave_run / "results.json").read_text())
    # 4 test recordings of 600 samples, each scored from its second sample on
    assert results["test_scored_samples"] == 4 * 599
    assert 0 < results["test_bits_per_sample"] < 9
    assert math.isclose(results["test_bits_per_sample"], results["test_loss"] / math.log(2))
    assert 0 < results["order0_bits_per_sample"] <= 8.01


def test_waveform_lm_scores_padded_batches_like_single_recordings() -> None:
    from seqbackbone.tasks.base import EvalContext
    from seqbackbone.tasks.batching import ListDataset, pad_collate
    from seqbackbone.tasks.waveform_lm import WaveformLM

    torch.manual_seed(0)
    import seqbackbone

    model = seqbackbone.create_model("mamba_wave_lm_tiny", d_model=16, n_layer=1).eval()
    waves = [torch.rand(n) * 1.6 - 0.8 for n in (37, 90, 64)]
    task = WaveformLM()
    batched = task.evaluate(model, ListDataset(waves, [0, 0, 0]), EvalContext(torch.device("cpu"), 3, pad_collate))
    single = [task.evaluate(model, ListDataset([w], [0]), EvalContext(torch.device("cpu"), 1, pad_collate))
              for w in waves]
    assert batched["scored_samples"] == sum(len(w) - 1 for w in waves)
    nats = sum(r["loss"] * r["scored_samples"] for r in single)
    assert math.isclose(batched["loss"], nats / batched["scored_samples"], rel_tol=1e-5)
    # and the metric is the plain cross entropy of the next mu-law code, in bits
    import torchaudio.functional as AF

    codes = AF.mu_law_encoding(waves[0], 256)
    with torch.no_grad():
        logits = model(waves[0][None])[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, codes[1:]).item() / math.log(2)
    assert math.isclose(single[0]["bits_per_sample"], expected, rel_tol=1e-5)


def test_generate_wav_files(wave_run: Path, tmp_path: Path) -> None:
    assert _generate([str(wave_run), "--num", "2", "--length", "160", "--seed", "3", "--out", str(tmp_path / "a")]) == 0
    for i in range(2):
        info = soundfile.info(str(tmp_path / "a" / f"sample_{i}.wav"))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (8000, 160, 1, "PCM_16")
    # the same seed gives the same audio; a prompt's first samples come back as given (16-bit exact)
    assert _generate([str(wave_run), "--num", "2", "--length", "160", "--seed", "3", "--out",
                      str(tmp_path / "b.wav")]) == 0
    for i in range(2):
        first, _ = soundfile.read(str(tmp_path / "a" / f"sample_{i}.wav"))
        again, _ = soundfile.read(str(tmp_path / f"b_{i}.wav"))
        assert np.array_equal(first, again)
    prompt = sorted(wave_run.parent.glob("0_spk_0.wav"))[0]
    assert _generate([str(wave_run), "--length", "120", "--prompt", str(prompt), "--prompt-seconds", "0.01",
                      "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--out", str(tmp_path / "p.wav")]) == 0
    out, rate = soundfile.read(str(tmp_path / "p.wav"))
    source, _ = soundfile.read(str(prompt))
    assert rate == 8000 and len(out) == 120
    np.testing.assert_allclose(out[:80], source[:80], atol=1 / 32768)


def test_generate_without_soundfile(wave_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where soundfile is missing (the GPU image), prompts are read and wav files written with the `wave` module."""
    prompt = sorted(wave_run.parent.glob("1_spk_1.wav"))[0]
    source, _ = soundfile.read(str(prompt))
    monkeypatch.setitem(sys.modules, "soundfile", None)  # `import soundfile` now raises ImportError
    assert _generate([str(wave_run), "--num", "2", "--length", "90", "--prompt", str(prompt), "--prompt-seconds",
                      "0.005", "--out", str(tmp_path / "w.wav")]) == 0
    monkeypatch.undo()
    for i in range(2):
        out, rate = soundfile.read(str(tmp_path / f"w_{i}.wav"))
        assert rate == 8000 and len(out) == 90
        np.testing.assert_allclose(out[:40], source[:40], atol=1.5 / 32768)


def test_generate_fasta(dna_run: Path, tmp_path: Path) -> None:
    fasta = tmp_path / "out.fa"
    assert _generate([str(dna_run), "--num", "3", "--length", "150", "--prompt", "ACGTTG", "--out", str(fasta)]) == 0
    from seqbackbone.data import read_fasta

    records = read_fasta(fasta)
    assert len(records) == 3
    for _, seq in records:
        assert len(seq) == 150 and set(seq) <= set("ACGT") and seq.startswith("ACGTTG")
    assert _generate([str(dna_run), "--length", "40", "--temperature", "0", "--out", str(tmp_path / "g.fa")]) == 0
    (_, seq), = read_fasta(tmp_path / "g.fa")
    assert len(seq) == 40


def test_generate_passes_compile_and_progress(dna_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seqbackbone.generation

    calls = []
    real = seqbackbone.generation.generate

    def recording(*args, **kwargs):
        calls.append((kwargs["compile"], kwargs["progress"]))
        return real(*args, **{**kwargs, "compile": False})

    monkeypatch.setattr(seqbackbone.generation, "generate", recording)
    assert _generate([str(dna_run), "--length", "20", "--compile", "--out", str(tmp_path / "c.fa")]) == 0
    assert _generate([str(dna_run), "--length", "20", "--no-progress", "--out", str(tmp_path / "d.fa")]) == 0
    assert calls == [(True, True), (False, False)]


def test_generate_bad_input(wave_run: Path, dna_run: Path, tmp_path: Path) -> None:
    with pytest.raises(TaskInputError, match="model"):
        _generate([str(tmp_path), "--length", "10", "--out", str(tmp_path / "x.wav")])
    with pytest.raises(TaskInputError, match="--length"):
        _generate([str(dna_run), "--length", "3", "--prompt", "ACGTA", "--out", str(tmp_path / "x.fa")])
    with pytest.raises(TaskInputError, match="--prompt"):
        _generate([str(wave_run), "--length", "10", "--prompt", str(tmp_path / "missing.wav"), "--out",
                   str(tmp_path / "x.wav")])
    with pytest.raises(TaskInputError, match="top_p"):
        _generate([str(dna_run), "--length", "10", "--top-p", "2", "--out", str(tmp_path / "x.fa")])
    torch.manual_seed(0)
    import seqbackbone

    seqbackbone.create_model("mamba_dna_cls_tiny", d_model=16, n_layer=1).save_pretrained(str(tmp_path / "cls"))
    with pytest.raises(TaskInputError, match="language model"):
        _generate([str(tmp_path / "cls"), "--length", "10", "--out", str(tmp_path / "x.fa")])
