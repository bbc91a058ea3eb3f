"""dna-motifs: exact labels, far-apart motifs, one-motif negatives, and a short run that learns."""

import json

import numpy as np
from seqbackbone.tasks.cli import main
from seqbackbone.tasks.dna_motifs import MOTIF_A, MOTIF_B, MotifDataset, make_example


def test_labels_are_exact_and_motifs_far_apart():
    kinds = {"both": 0, "a": 0, "b": 0, "none": 0}
    for i in range(400):
        codes, label = make_example(np.random.default_rng([7, i]), 1024, 512)
        seq = "".join("ACGT"[c] for c in codes)
        a, b = seq.count(MOTIF_A), seq.count(MOTIF_B)
        assert a <= 1 and b <= 1 and label == int(a == 1 and b == 1)
        if label:
            assert abs(seq.find(MOTIF_A) - seq.find(MOTIF_B)) >= 512
        kinds["both" if label else "a" if a else "b" if b else "none"] += 1
    # Half positives; most negatives hold one of the two motifs, so neither motif alone decides the label.
    assert 160 < kinds["both"] < 240 and kinds["a"] > 50 and kinds["b"] > 50 and kinds["none"] > 15


def test_items_are_reproducible_and_fresh_each_epoch():
    ds = MotifDataset(8, 300, 150, seed=1, stream=0, fresh_each_epoch=True, short_len=64, short_epochs=1)
    x0 = ds[3][0]
    assert len(x0) == 64 and np.array_equal(ds[3][0], x0)
    ds.set_epoch(1)
    assert len(ds[3][0]) == 300
    fixed = MotifDataset(8, 300, 150, seed=1, stream=2, fresh_each_epoch=False)
    first = fixed[5][0]
    fixed.set_epoch(3)
    assert np.array_equal(fixed[5][0], first)


def test_short_run_learns_above_chance(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "dna-motifs", "--out", str(out), "--device", "cpu", "--no-progress",
                 "--max-steps", "60", "--eval-every", "60", "--set", "seq_len=128", "--set", "short_len=64",
                 "--set", "n_val=100", "--set", "n_test=300"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] > 0.62, results  # chance (always "yes") is 0.5
