"""The command line end to end on tiny data: train, eval, list-tasks, list-models, and one-line errors for bad
input (exit status 2)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from seqbackbone.tasks.cli import main

TINY = 'model_kwargs={"d_model": 8, "n_layer": 1, "d_state": 4}'
MOTIFS = ["--set", "seq_len=48", "--set", "n_train=16", "--set", "n_val=8", "--set", "n_test=8", "--set", TINY]
FAST = ["--max-steps", "2", "--eval-every", "2", "--batch-size", "4", "--device", "cpu", "--no-progress"]
REPO = Path(__file__).resolve().parents[2]


def test_train_then_eval_then_resume_a_finished_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "dna-motifs", "--out", str(out), *FAST, *MOTIFS]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["test_accuracy"] <= 1 and results["steps"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_kwargs"]["d_model"] == 8 and cfg["seq_len"] == 48 and cfg["batch_size"] == 4
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == pytest.approx(results["test_accuracy"])
    # A finished run resumed has nothing left to do and tests again.
    assert main(["train", "dna-motifs", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["test_accuracy"] == results["test_accuracy"]


def test_config_file_and_flags(tmp_path):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"seq_len": 48, "n_train": 8, "n_val": 4, "n_test": 4, "batch_size": 2,
                                  "max_steps": 5, "model_kwargs": {"d_model": 8, "n_layer": 1, "d_state": 4}}))
    out = tmp_path / "run"
    assert main(["train", "dna-motifs", "--config", str(config), "--max-steps", "1", "--out", str(out),
                 "--device", "cpu", "--no-progress", "--seed", "5"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["max_steps"], cfg["batch_size"], cfg["seed"], cfg["n_train"]) == (1, 2, 5, 8)


def test_list_tasks_and_models(capsys):
    assert main(["list-tasks"]) == 0
    listed = capsys.readouterr().out
    for name in ("dna-motifs", "spoken-digits", "dna-classify", "genome-lm", "image-classify"):
        assert name in listed
    assert main(["list-models", "mamba_dna_cls*"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["mamba_dna_cls_base", "mamba_dna_cls_small", "mamba_dna_cls_tiny"]
    assert all(ln.split()[1].endswith("M") for ln in lines)


def bad_csv_folder(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "train.csv").write_text("sequence,class\nACGT,1\n")
    (folder / "test.csv").write_text("seq,label\nACGT,1\n")
    return folder


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "dna-motif"], "unknown task 'dna-motif'; did you mean dna-motifs"),
        (["train", "dna-motifs", "--model", "mamba_dna_cls_tiyn"], "unknown model 'mamba_dna_cls_tiyn'; did you mean"),
        (["train", "dna-classify"], "needs --data"),
        (["train", "dna-classify", "--data", "{tmp}/missing"], "data path {tmp}/missing does not exist"),
        (["train", "dna-classify", "--data", "{tmp}"], "has no test.csv"),
        (["train", "dna-classify", "--data", "{csv}"], "expected columns seq,label (missing: seq,label)"),
        (["train", "spoken-digits", "--data", "{tmp}"], "no audio files"),
        (["train", "image-classify", "--data", "{tmp}"], "no readable images"),
        (["train", "genome-lm", "--data", "{tmp}/empty.fa"], "holds no sequence"),
        (["train", "dna-motifs", "--set", "seq_lenn=5"],
         "unknown setting 'seq_lenn' for task dna-motifs; did you mean seq_len?"),
        (["train", "dna-motifs", "--config", "{tmp}/bad.json"], "is not valid JSON"),
        (["train", "dna-motifs", "--epochs", "0"], "--epochs must be positive"),
        (["eval", "{tmp}"], "is not a run directory"),
        (["list-models", "nothing_like_this*"], "no registered model matches"),
    ],
)
def test_bad_input_gives_one_line_and_status_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty.fa").write_text(">header only\n")
    (tmp_path / "bad.json").write_text("{not json")
    csv = bad_csv_folder(tmp_path)
    fill = {"tmp": str(tmp_path), "csv": str(csv)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqbackbone: error: ") and err.count("\n") == 1, err
    assert message.format(**fill) in err and "Traceback" not in err


def test_bad_input_through_python_m_seqbackbone(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "seqbackbone", "train", "dna-classify", "--data", str(tmp_path / "nowhere")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"seqbackbone: error: data path {tmp_path / 'nowhere'} does not exist"


def test_two_process_data_parallel_run_on_cpu(tmp_path):
    """torchrun with 2 gloo processes: each trains on its half of every epoch, rank 0 writes the run."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this python")
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "seqbackbone", "train", "dna-motifs",
         "--out", str(out), *FAST, *MOTIFS],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["steps_per_epoch"] == 2  # 16 items / (2 processes x batch 4)
    assert json.loads((out / "results.json").read_text())["steps"] == 2
    assert proc.stdout.count("results (") == 1  # only rank 0 reports
