"""The training loop on a toy task: exact resume, non-finite loss, time limit, files of a run, optimiser groups."""

import csv
import json
import math

import pytest
import torch
from seqbackbone.tasks import base
from seqbackbone.tasks.checkpoint import load_checkpoint, save_checkpoint
from seqbackbone.tasks.train import NonFiniteLoss, param_groups, resolve_config, train, warmup_cosine

from .toy import ToyModel, ToyTask


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    base._load_builtin_tasks()
    monkeypatch.setitem(base.TASKS, "toy", ToyTask)


def toy_cfg(out, **kw):
    flags = {"out": str(out), "device": "cpu", "progress": False, "max_steps": 13, "eval_every": 4, **kw}
    return resolve_config(ToyTask(), None, flags)


def rows(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(fh)]


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resumed_run_ends_in_the_same_state(tmp_path, ema_decay):
    # 13 steps over 8 batches per epoch: the halt at step 8 falls on an epoch boundary; the one at step 4 does not.
    # With ema_decay, the moving average of the weights (evaluated and saved instead of them) must resume too.
    train(toy_cfg(tmp_path / "whole", ema_decay=ema_decay))
    for halt in (4, 8):
        part = tmp_path / f"part{halt}"
        assert train(toy_cfg(part, ema_decay=ema_decay), halt_after_step=halt) == {"halted_at_step": halt}
        assert load_checkpoint(part / "last.ckpt")["step"] == halt
        assert not (part / "results.json").exists()
        train({"task": "toy", "resume": str(part), "progress": False})

        a, b = load_checkpoint(tmp_path / "whole" / "last.ckpt"), load_checkpoint(part / "last.ckpt")
        assert a["step"] == b["step"] == 13 and (a["epoch"], a["pos"]) == (b["epoch"], b["pos"])
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), k
        for i, state in a["optimizer"]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)
        assert a["scheduler"] == b["scheduler"]
        assert ("ema" in a) == ("ema" in b) == (ema_decay > 0)
        if ema_decay:
            assert a["ema"]["updates"] == b["ema"]["updates"] == 13
            for k, v in a["ema"]["weights"].items():
                assert torch.equal(v, b["ema"]["weights"][k]), k
        assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
        assert rows(tmp_path / "whole" / "metrics.csv") == rows(part / "metrics.csv")
        whole = json.loads((tmp_path / "whole" / "results.json").read_text())
        resumed = json.loads((part / "results.json").read_text())
        assert whole["test_accuracy"] == resumed["test_accuracy"] and whole["best_step"] == resumed["best_step"]


def test_random_streams_matter(tmp_path):
    """The check above has teeth: a different seed (dropout, noise) ends elsewhere."""
    train(toy_cfg(tmp_path / "a", max_steps=3))
    train(toy_cfg(tmp_path / "b", max_steps=3, seed=1))
    a, b = load_checkpoint(tmp_path / "a" / "last.ckpt"), load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert not torch.equal(a["model"]["net.0.weight"], b["model"]["net.0.weight"])


def test_run_directory_contents(tmp_path):
    out = tmp_path / "run"
    results = train(toy_cfg(out, max_steps=None, epochs=3, eval_every=None, lr=0.05))
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.csv", "curves.png", "results.json",
                                                 "model", "last.ckpt"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "toy" and cfg["total_steps"] == 24 and cfg["task_info"]["labels"] == ["no", "yes"]
    metrics = rows(out / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == [8, 16, 24]  # once per epoch
    assert {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(metrics[0])
    assert results["test_accuracy"] > 0.75  # the toy problem is linear
    assert json.loads((out / "results.json").read_text())["test_accuracy"] == results["test_accuracy"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.tmp"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match=r"loss is nan .* at step 7, .*last good checkpoint \(step 4\)"):
        train(toy_cfg(out, nan_at_call=7))
    ck = load_checkpoint(out / "last.ckpt")
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_time_limit_stops_training_and_still_tests(tmp_path):
    results = train(toy_cfg(tmp_path / "run", max_steps=10_000, eval_every=10_000, time_limit=1e-6))
    assert results["stopped_early"] and results["steps"] == 1 and "test_accuracy" in results
    assert load_checkpoint(tmp_path / "run" / "last.ckpt")["step"] == 1


def test_checkpoint_is_atomic_and_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(2)})

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1 and list(tmp_path.iterdir()) == [path]
    torch.save({"obj": object.__new__(ToyModel)}, tmp_path / "code.ckpt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "code.ckpt")


def test_param_groups_and_schedule():
    model = ToyModel()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"net.0.weight"}
    assert {names[id(p)] for p in no_decay["params"]} == {"net.0.bias", "net.3.weight", "net.3.bias"}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    f = warmup_cosine(total_steps=100, warmup_steps=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1) and all(f(s) >= f(s + 1) for s in range(10, 100))


def test_label_smoothing_changes_the_training_loss(tmp_path):
    task = ToyTask()
    task.cfg = {"noise": 0.0}
    model = ToyModel().eval()  # no dropout: both losses see the same logits
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    batch = {"x": x, "y": (x.sum(1) > 0).long()}
    g = torch.Generator().manual_seed(0)
    plain = task.train_loss(model, batch, g)
    task.cfg = {"noise": 0.0, "label_smoothing": 0.2}
    smooth = task.train_loss(model, batch, g)
    logp = torch.log_softmax(model(x), -1)
    expected = -(0.8 * logp.gather(1, batch["y"][:, None])[:, 0] + 0.2 * logp.mean(-1)).mean()
    torch.testing.assert_close(smooth, expected)
    assert not torch.isclose(plain, smooth)
    with pytest.raises(ValueError, match="label_smoothing"):
        toy_cfg(tmp_path, label_smoothing=1.0)


def test_threads_setting_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        train(toy_cfg(tmp_path / "one", threads=1, max_steps=2))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="--threads must be positive"):
        toy_cfg(tmp_path, threads=0)
