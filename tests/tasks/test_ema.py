"""The moving average of the weights (ema_decay): the update against a hand computation, swapping it in and out,
the loop evaluating and saving it, bad values. Exact resume with it is in test_train.py."""

import csv
import json

import pytest
import torch
from seqbackbone.tasks import base
from seqbackbone.tasks.base import EvalContext, TaskInputError
from seqbackbone.tasks.checkpoint import load_checkpoint
from seqbackbone.tasks.cli import _parse_set, check_settings
from seqbackbone.tasks.ema import WeightEMA
from seqbackbone.tasks.train import evaluate_run, train
from torch import nn

from .test_train import toy_cfg
from .toy import ToyModel, ToyTask


@pytest.fixture(autouse=True)
def toy_task(monkeypatch):
    base._load_builtin_tasks()
    monkeypatch.setitem(base.TASKS, "toy", ToyTask)


class Tiny(nn.Module):
    """Two parameters, a float buffer, an integer buffer and a tied weight."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.head = nn.Linear(2, 1, bias=False)
        self.head.weight = self.lin.weight
        self.register_buffer("stat", torch.zeros(2))
        self.register_buffer("count", torch.tensor(0))

    def set(self, w: list[float], b: float, stat: list[float], count: int) -> None:
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([w]))
            self.lin.bias.fill_(b)
            self.stat.copy_(torch.tensor(stat))
            self.count.fill_(count)


def test_update_matches_a_hand_computation():
    m = Tiny()
    m.set([1.0, 2.0], 3.0, [0.0, 0.0], 0)
    ema = WeightEMA(m, decay=0.2)
    # Warmup: min(0.2, (1 + n) / (10 + n)) = 0.1, 2/11, then 0.2 (3/12 = 0.25 is past the decay).
    w, b = torch.tensor([1.0, 2.0]), 3.0
    for n, (new_w, new_b, d) in enumerate([([5.0, -1.0], 1.0, 1 / 10), ([0.0, 4.0], -2.0, 2 / 11),
                                           ([2.0, 2.0], 7.0, 0.2)]):
        assert ema.current_decay() == pytest.approx(d)
        m.set(new_w, new_b, [n + 0.5, -n], 10 * (n + 1))
        ema.update(m)
        w = d * w + (1 - d) * torch.tensor(new_w)
        b = d * b + (1 - d) * new_b
        torch.testing.assert_close(ema.weights["lin.weight"], w[None])
        torch.testing.assert_close(ema.weights["lin.bias"], torch.tensor([b]))
        assert torch.equal(ema.weights["stat"], torch.tensor([n + 0.5, -n]))  # buffers copied, not averaged
        assert ema.weights["count"].dtype == torch.int64 and int(ema.weights["count"]) == 10 * (n + 1)
    assert ema.updates == 3
    assert ema.weights["head.weight"] is ema.weights["lin.weight"]  # tied in the model, one tensor here
    assert ema.weights["lin.weight"].data_ptr() != m.lin.weight.data_ptr()


def test_averages_are_fp32_for_a_bf16_model():
    m = Tiny().to(torch.bfloat16)
    ema = WeightEMA(m, decay=0.5)
    with torch.no_grad():
        m.lin.bias.fill_(1.0)
    start = ema.weights["lin.bias"].clone()
    ema.update(m)
    assert ema.weights["lin.weight"].dtype == ema.weights["lin.bias"].dtype == torch.float32
    torch.testing.assert_close(ema.weights["lin.bias"], 0.1 * start + 0.9)


def test_swapped_in_puts_the_average_in_and_the_weights_back():
    torch.manual_seed(0)
    model = ToyModel()
    ema = WeightEMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"), ema.swapped_in(model):
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema.weights[k]) and not torch.equal(v, trained[k]), k
        raise RuntimeError("inside")
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_the_loop_evaluates_saves_and_tests_the_average(tmp_path):
    # One evaluation, at the last step: model/ is the average at step 6, the same as last.ckpt's.
    cfg = dict(max_steps=6, eval_every=6, lr=0.05)
    results = train(toy_cfg(tmp_path / "ema", ema_decay=0.9, **cfg))
    train(toy_cfg(tmp_path / "plain", **cfg))
    ck, plain = load_checkpoint(tmp_path / "ema" / "last.ckpt"), load_checkpoint(tmp_path / "plain" / "last.ckpt")
    # The average changes nothing in training, and the trained weights come back after each evaluation.
    for k in ck["model"]:
        assert torch.equal(ck["model"][k], plain["model"][k]), k
    assert ck["ema"]["updates"] == 6 and "ema" not in plain  # one update per optimiser step
    saved = ToyModel.load(str(tmp_path / "ema" / "model")).state_dict()
    for k, v in saved.items():
        assert torch.equal(v, ck["ema"]["weights"][k]), k
    assert not torch.equal(saved["net.0.weight"], ck["model"]["net.0.weight"])

    task = ToyTask()
    task.cfg = toy_cfg(tmp_path / "ema")
    data = task.load_data(task.cfg)
    ctx = EvalContext(torch.device("cpu"), 16, data.collate)

    def evaluate(weights, dataset):
        model = ToyModel()
        model.load_state_dict(weights)
        return task.evaluate(model.eval(), dataset, ctx)

    averaged, raw = evaluate(ck["ema"]["weights"], data.test), evaluate(ck["model"], data.test)
    assert results["test_loss"] == averaged["loss"] != raw["loss"]
    assert json.loads((tmp_path / "plain" / "results.json").read_text())["test_loss"] == raw["loss"]
    assert evaluate_run(tmp_path / "ema", device="cpu")["test_loss"] == averaged["loss"]
    with open(tmp_path / "ema" / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert float(row["val_loss"]) == pytest.approx(evaluate(ck["ema"]["weights"], data.val)["loss"], rel=1e-5)


def test_bad_values_are_refused(tmp_path):
    for bad in (1.0, 1.5, -0.1, "high"):
        with pytest.raises(TaskInputError, match="ema_decay must lie in \\[0, 1\\)"):
            toy_cfg(tmp_path, ema_decay=bad)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(ToyModel(), 1.0)
    assert toy_cfg(tmp_path)["ema_decay"] == 0.0
    flags = _parse_set(["ema_decay=0.999"])
    check_settings(ToyTask(), flags)  # a known setting for --set
    assert toy_cfg(tmp_path, **flags)["ema_decay"] == 0.999
