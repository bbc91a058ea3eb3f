"""Each task on tiny files written here: readers, label mapping, skipped inputs, and the genome-lm scoring."""

import gzip
import json
import math

import numpy as np
import pytest
import torch
from seqbackbone.tasks.base import EvalContext
from seqbackbone.tasks.cli import main
from seqbackbone.tasks.genome_lm import GenomeLM, ScoredWindows, window_collate

TINY = {"d_model": 8, "n_layer": 1, "d_state": 4}
FAST = ["--max-steps", "2", "--eval-every", "2", "--batch-size", "4", "--device", "cpu", "--no-progress",
        "--set", f"model_kwargs={json.dumps(TINY)}"]


def test_spoken_digits_skips_broken_files(tmp_path, capsys):
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(0)
    for label, freq in (("0", 300.0), ("1", 900.0)):
        for take in (0, 1, 5, 6, 7, 8):
            n = int(rng.integers(200, 600))
            wave = 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / 8000) + 0.01 * rng.standard_normal(n)
            sf.write(str(tmp_path / f"{label}_amy_{take}.wav"), wave.astype(np.float32), 8000)
    (tmp_path / "1_amy_9.wav").write_bytes(b"RIFF....WAVEnot really")
    sf.write(str(tmp_path / "0_amy_9.wav"), np.zeros(0, np.float32), 8000)
    out = tmp_path / "run"
    assert main(["train", "spoken-digits", "--data", str(tmp_path), "--out", str(out),
                 "--model", "mamba_audio_cls_tiny", "--set", "val_fraction=0.2", *FAST]) == 0
    assert "skipped 2 of 10 audio files" in capsys.readouterr().err
    info = json.loads((out / "config.json").read_text())["task_info"]
    assert info["labels"] == ["0", "1"] and info["sample_rate"] == 8000 and info["n_test"] == 4
    assert info["n_train"] + info["n_val"] == 8 and info["n_skipped_files"] == 2
    assert 0 <= json.loads((out / "results.json").read_text())["test_accuracy"] <= 1


def test_dna_classify_string_labels_and_bad_rows(tmp_path, capsys):
    rng = np.random.default_rng(1)
    labels = ["EI", "IE", "N"]
    rows = [f"{''.join(rng.choice(list('ACGT'), 20))},{labels[i % 3]}" for i in range(24)]
    (tmp_path / "train.csv").write_text("seq,label\n" + "\n".join(rows[:18]) + "\nAC1T,EI\n,N\n")
    (tmp_path / "test.csv").write_text("seq,label\n" + "\n".join(rows[18:]) + "\n")
    out = tmp_path / "run"
    assert main(["train", "dna-classify", "--data", str(tmp_path), "--out", str(out), "--model",
                 "mamba_dna_cls_tiny", *FAST]) == 0
    assert "skipped 2 of 20 rows" in capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task_info"]["labels"] == labels and cfg["task_info"]["n_test"] == 6
    model_cfg = json.loads((out / "model" / "config.json").read_text())
    assert "rc_conjoin" in json.dumps(model_cfg)  # the saved model averages both strands wherever it is used
    # Test labels the training data lacks are bad input.
    (tmp_path / "test.csv").write_text("seq,label\nACGT,XX\n")
    assert main(["eval", str(out)]) == 2
    assert "labels ['XX']" in capsys.readouterr().err


def write_idx(path, array):
    import struct

    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw))


@pytest.mark.parametrize("model", ["mamba_pixel_tiny", "vimamba_tiny_patch4_28"])
def test_image_classify_mnist_files(tmp_path, model):
    rng = np.random.default_rng(2)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 30).astype(np.uint8))
    out = tmp_path / "run"
    assert main(["train", "image-classify", "--data", str(tmp_path), "--out", str(out), "--model", model,
                 "--set", "n_train_from_test=24", *FAST]) == 0
    info = json.loads((out / "config.json").read_text())["task_info"]
    assert info["n_test"] == 6 and info["n_train"] + info["n_val"] == 24 and len(info["labels"]) == 10


def test_scored_windows_cover_each_position_once():
    ids = torch.arange(1000)
    for score_from, length in ((600, 64), (10, 64), (0, 16), (999, 8)):
        ds = ScoredWindows(ids, score_from, length)
        covered = []
        for window, first in (ds[i] for i in range(len(ds))):
            assert len(window) <= length and first >= 1
            start = int(window[0])
            covered += list(range(start + first, start + len(window)))
            assert first >= length // 2 or start + first == max(score_from, 1)  # context of >= length/2 bases
        assert covered == list(range(max(score_from, 1), 1000)) and ds.n_scored == len(covered)


class _Uniform(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(*x.shape, 9)


class _Oracle(torch.nn.Module):
    """Peeks at the next token: right next-token alignment gives ~0 bits, an off-by-one gives many."""

    def forward(self, x):
        nxt = torch.roll(x, -1, dims=1)
        return torch.nn.functional.one_hot(nxt, 9).float() * 30.0


def test_genome_lm_bits_per_base_alignment():
    from seqbackbone.tokenizer import DnaTokenizer

    rng = np.random.default_rng(3)
    ids = DnaTokenizer().encode("".join(rng.choice(list("ACGT"), 700)))
    ds = ScoredWindows(ids, 500, 64)
    ctx = EvalContext(torch.device("cpu"), 4, window_collate)
    task = GenomeLM()
    uniform = task.evaluate(_Uniform(), ds, ctx)
    assert uniform["bits_per_base"] == pytest.approx(2.0) and uniform["scored_bases"] == 200
    assert task.evaluate(_Oracle(), ds, ctx)["bits_per_base"] < 1e-6


def test_genome_lm_run_reports_model_and_markov(tmp_path):
    rng = np.random.default_rng(4)
    # An order-1 chain: after A comes C, after C comes G, ... mostly; the Markov baseline finds order >= 1.
    codes = [0]
    for _ in range(5999):
        codes.append((codes[-1] + 1) % 4 if rng.random() < 0.9 else int(rng.integers(0, 4)))
    seq = "".join("ACGT"[c] for c in codes)
    path = tmp_path / "g.fa.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(">chain\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    out = tmp_path / "run"
    assert main(["train", "genome-lm", "--data", str(path), "--out", str(out), "--model", "mamba_dna_lm_tiny",
                 "--set", "seq_len=64", "--set", "eval_len=128", "--set", "markov_max_order=3", *FAST]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_scored_bases"] == 600 and results["markov_scored_bases"] == 600
    assert results["markov_order"] >= 1 and results["markov_bits_per_base"] < 1.0
    assert math.isclose(results["test_bits_per_base"], results["test_loss"] / math.log(2))


def test_speed_perturbation_keeps_whole_recordings():
    from seqbackbone.tasks.spoken_digits import speed_perturb

    x = torch.randn(6, 1000)
    mask = torch.ones(6, 1000, dtype=torch.bool)
    mask[3:, 600:] = False
    x = x * mask
    out = speed_perturb({"x": x, "mask": mask, "y": torch.zeros(6)}, [0.9, 1.0, 1.1], torch.Generator().manual_seed(1))
    new_len = out["mask"].sum(1).tolist()
    old_len = mask.sum(1).tolist()
    ratios = {round(o / n, 1) for o, n in zip(old_len, new_len, strict=True)}
    assert ratios <= {0.9, 1.0, 1.1} and len(ratios) > 1  # 1.1x speed -> 1/1.1 of the samples
    for i in range(6):
        if new_len[i] == old_len[i]:
            assert torch.equal(out["x"][i, : new_len[i]], x[i, : old_len[i]])
        assert not out["x"][i, new_len[i] :].any()


def test_speed_perturbation_pads_to_a_bucket():
    from seqbackbone.tasks.spoken_digits import speed_perturb

    x = torch.randn(4, 1000)
    mask = torch.ones(4, 1000, dtype=torch.bool)
    out = speed_perturb({"x": x, "mask": mask, "y": torch.zeros(4)}, [0.9, 1.1], torch.Generator().manual_seed(0),
                        bucket=256)
    assert out["x"].shape[1] in (1024, 1280) and out["x"].shape[1] >= out["mask"].sum(1).max()
    assert not out["x"][~out["mask"]].any()
