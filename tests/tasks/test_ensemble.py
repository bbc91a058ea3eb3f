"""`seqbackbone eval RUN_DIR RUN_DIR ...`: the mean of several classification runs' class probabilities, against a
computation by hand, and the runs it refuses to average."""

import json

import numpy as np
import pytest
import torch
from seqbackbone.tasks.cli import main

import seqbackbone
from seqbackbone.tokenizer import DnaTokenizer

FAST = ["--max-steps", "3", "--eval-every", "3", "--batch-size", "4", "--device", "cpu", "--no-progress"]
TINY = 'model_kwargs={"d_model": 16, "n_layer": 1, "d_state": 4}'


def dna_folder(path, seed=0):
    """train.csv and test.csv of random sequences of 12-30 bases, labels A / B (the test set of varied lengths, so
    that batches are padded and sorted by length)."""
    rng = np.random.default_rng(seed)
    rows = [f"{''.join(rng.choice(list('ACGT'), rng.integers(12, 31)))},{'AB'[i % 2]}" for i in range(40)]
    path.mkdir()
    (path / "train.csv").write_text("seq,label\n" + "\n".join(rows[:28]) + "\n")
    (path / "test.csv").write_text("seq,label\n" + "\n".join(rows[28:]) + "\n")
    return path, rows[28:]


def train_run(data, out, seed):
    assert main(["train", "dna-classify", "--data", str(data), "--out", str(out), "--model", "mamba_dna_cls_tiny",
                 "--seed", str(seed), "--lr", "3e-2", "--set", TINY, *FAST]) == 0
    return out


def by_hand(run_dirs, test_rows):
    """Accuracy and mean NLL of the mean softmax over the runs, one unpadded sequence at a time."""
    tok = DnaTokenizer()
    models = [seqbackbone.from_pretrained(str(d / "model")).eval() for d in run_dirs]
    correct, nll = 0, 0.0
    for row in test_rows:
        seq, label = row.split(",")
        y = "AB".index(label)
        with torch.no_grad():
            probs = sum(m(tok.encode(seq)[None]).float().softmax(-1)[0] for m in models) / len(models)
        correct += int(probs.argmax()) == y
        nll -= float(probs[y].log())
    return correct / len(test_rows), nll / len(test_rows)


def test_ensemble_averages_probabilities_and_reports_each_run(tmp_path, capsys):
    data, test_rows = dna_folder(tmp_path / "data")
    runs = [train_run(data, tmp_path / f"seed{s}", s) for s in (0, 1, 2)]
    capsys.readouterr()
    assert main(["eval", *map(str, runs)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["members"] == 3 and sorted(got["runs"]) == sorted(map(str, runs))
    accuracy, loss = by_hand(runs, test_rows)
    assert got["test_accuracy"] == pytest.approx(accuracy)
    assert got["test_loss"] == pytest.approx(loss, rel=1e-4)
    for run in runs:  # each member as `eval RUN_DIR` and by hand
        assert main(["eval", str(run)]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert got["runs"][str(run)]["test_accuracy"] == pytest.approx(alone["test_accuracy"])
        assert got["runs"][str(run)]["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-4)
        assert alone["test_accuracy"] == pytest.approx(by_hand([run], test_rows)[0])
    # the runs disagree somewhere, so the mean is not any one run's
    assert len({round(r["test_loss"], 6) for r in got["runs"].values()}) == 3
    # one run twice: exactly that run
    assert main(["eval", str(runs[0]), str(runs[0])]) == 0
    twice = json.loads(capsys.readouterr().out)
    assert twice["test_accuracy"] == got["runs"][str(runs[0])]["test_accuracy"]
    assert twice["test_loss"] == pytest.approx(got["runs"][str(runs[0])]["test_loss"], rel=1e-6)


def test_ensemble_refuses_runs_it_cannot_average(tmp_path, capsys):
    data, _ = dna_folder(tmp_path / "data")
    other, _ = dna_folder(tmp_path / "other", seed=1)
    a = train_run(data, tmp_path / "a", 0)
    b = train_run(other, tmp_path / "b", 0)
    motifs = tmp_path / "motifs"
    assert main(["train", "dna-motifs", "--out", str(motifs), "--set", "seq_len=48", "--set", "n_train=8",
                 "--set", "n_val=4", "--set", "n_test=4", "--set", TINY, *FAST]) == 0
    fasta = tmp_path / "g.fa"
    fasta.write_text(">g\n" + "".join(np.random.default_rng(0).choice(list("ACGT"), 3000)) + "\n")
    lm = tmp_path / "lm"
    assert main(["train", "genome-lm", "--data", str(fasta), "--out", str(lm), "--model", "mamba_dna_lm_tiny",
                 "--set", "seq_len=64", "--set", TINY, *FAST]) == 0
    capsys.readouterr()
    for runs, message in (([a, motifs], "runs of one task"), ([a, b], "trained on different data"),
                          ([lm, lm], "genome-lm is not a classification task")):
        assert main(["eval", *map(str, runs)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # other data on purpose: both tested on --data's test set
    assert main(["eval", str(a), str(b), "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == 2
