"""The model benchmark at toy sizes on the CPU (tables, OOM and error rows, plots), and the Transformer baseline."""

import json
import math
import time

import pytest
import torch

from seqbackbone.bench import models as bench
from seqbackbone.bench.transformer import TransformerBackbone, matching_n_layer, transformer_layer_parameters

TOY = ["--device", "cpu", "--d-model", "16", "--n-layer", "2", "--tokens", "64", "--warmup", "0", "--reps", "1",
       "--decode-reps", "2", "--max-seconds", "0.01"]


@pytest.fixture(autouse=True)
def _one_thread():
    # toy sizes: one intra-op thread avoids thread hand-off costs (and contention on a shared 2-core runner)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_smoke_run_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench.main(TOY + ["--lengths", "16,32", "--decode-contexts", "24", "--out", str(out)])
    assert code == 0
    report = (out / "models.md").read_text()
    assert capsys.readouterr().out.strip() == report.strip()
    for variant in bench.VARIANTS:
        rows = _table_rows(report, variant)
        sweep = [r for r in rows if len(r) == 7]
        assert [(r[1], r[2]) for r in sweep] == [("16", "4"), ("32", "2")], variant
        for r in sweep:
            assert float(r[3].replace(",", "")) > 0 and float(r[4].replace(",", "")) > 0
            assert r[5] == r[6] == "-"  # no CUDA memory counters on the CPU
        decode = [r for r in rows if len(r) == 9]
        if variant.endswith("causal"):
            assert len(decode) == 1 and decode[0][1] == "24"
            assert float(decode[0][2]) > 0 and float(decode[0][3]) > 0
            assert decode[0][4] == decode[0][7] == decode[0][8] == "-"  # CUDA graphs, bandwidth, profiler: GPU only
        else:
            assert decode == []
    result = json.loads((out / "models.json").read_text())
    for row in result["decode"]:
        assert row["step_read_mib"] > row["cache_mib"] > 0  # weights + decoding state > state
    params = {name: v["parameters"] for name, v in result["meta"]["variants"].items()}
    assert all(p > 0 for p in params.values())
    assert params["mamba-bidirectional"] > params["mamba-causal"]  # the reverse SSM parameters
    assert params["transformer-causal"] == params["transformer-bidirectional"]
    assert "tokens per batch: 64" in report and "Crossover" in report
    for name in ("models_train_time", "models_inference_time", "models_memory", "models_decode"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name}.png)" in report


class _FlakyTransformer(TransformerBackbone):
    """Runs out of memory from length 32 on, and fails otherwise at length 24: the run must go on and say so."""

    def forward(self, x, cache=None):
        if x.shape[1] >= 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if x.shape[1] == 24:
            raise RuntimeError("simulated failure | with a pipe")
        return super().forward(x, cache=cache)


def test_oom_and_errors_are_reported_not_dropped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "TransformerBackbone", _FlakyTransformer)
    out = tmp_path / "bench"
    argv = TOY + ["--lengths", "16,24,32", "--variants", "transformer-causal,transformer-bidirectional",
                  "--decode-contexts", "16,32", "--out", str(out)]
    assert bench.main(argv) == 0
    capsys.readouterr()
    result = json.loads((out / "models.json").read_text())
    by_length = {(r["variant"], r["length"]): r for r in result["rows"]}
    assert len(by_length) == 6
    for variant in ("transformer-causal", "transformer-bidirectional"):
        assert isinstance(by_length[variant, 16]["train_ms"], float)
        failed = by_length[variant, 24]
        assert failed["train_ms"].startswith("error: RuntimeError: simulated failure")
        assert failed["infer_ms"].startswith("error: RuntimeError")
        oom = by_length[variant, 32]
        assert oom["train_ms"] == oom["infer_ms"] == "OOM"
    decode = {r["context"]: r for r in result["decode"]}
    assert isinstance(decode[16]["decode_ms"], float)
    assert decode[32]["prefill_ms"] == "OOM" and decode[32]["decode_ms"] == "needs prefill"
    report = (out / "models.md").read_text()
    assert "| transformer-causal | 32 | 2 | OOM | OOM | OOM | OOM |" in report
    assert "simulated failure / with a pipe" in report  # a pipe in a message must not break the table


def _rows(times: dict[str, list], lengths: list[int]) -> list[dict]:
    return [
        {"variant": f"{family}-causal", "family": family, "causal": True, "length": n, "train_ms": t}
        for family, values in times.items()
        for n, t in zip(lengths, values, strict=True)
    ]


def test_crossover_from_the_first_length_mamba_stays_faster():
    lengths = [1024, 2048, 4096, 8192]
    rows = _rows({"mamba": [10.0, 10.0, 10.0, 10.0], "transformer": [2.0, 5.0, 20.0, "OOM"]}, lengths)
    c = bench.crossover(rows, causal=True)
    assert c["length"] == 4096
    assert c["interpolated"] == pytest.approx(math.sqrt(2048 * 4096))  # ratio 0.5 at 2K, 2 at 4K
    assert c["ratios"][8192] == "Transformer OOM"
    assert "from L = 4K on" in c["text"]

    # faster at 2K, slower again at 4K: the crossover is where it stays faster
    rows = _rows({"mamba": [10.0, 10.0, 10.0, 10.0], "transformer": [2.0, 11.0, 9.0, 30.0]}, lengths)
    assert bench.crossover(rows, causal=True)["length"] == 8192
    rows = _rows({"mamba": [10.0, 10.0], "transformer": [20.0, 30.0]}, lengths[:2])
    assert "every measured length" in bench.crossover(rows, causal=True)["text"]
    rows = _rows({"mamba": [10.0, 10.0], "transformer": [2.0, 3.0]}, lengths[:2])
    assert bench.crossover(rows, causal=True)["length"] is None
    assert bench.crossover(rows, causal=False)["length"] is None  # no bidirectional rows at all


def test_measure_ms_repetitions():
    calls = []
    fast = lambda: calls.append(1)
    assert bench.measure_ms(fast, torch.device("cpu"), warmup=2, reps=10, max_seconds=5.0) >= 0
    assert len(calls) == 2 + 1 + 10  # warm-up, sizing call, timed calls
    calls.clear()

    def slow():
        calls.append(1)
        time.sleep(0.02)

    assert bench.measure_ms(slow, torch.device("cpu"), warmup=5, reps=10, max_seconds=0.01) >= 20
    assert len(calls) == 1 + 1 + 2  # warm-up stops at the time limit; the sizing call is the first of 3 samples


def test_decode_bounds_text():
    row = {"variant": "mamba-causal", "family": "mamba", "context": 65536, "decode_ms": 2.0,
           "decode_graph_ms": 0.5, "step_read_mib": 200.0, "gpu_ops": 250}
    floor = bench.read_floor_us(row, 4.0)
    assert floor == pytest.approx(200 * 2**20 / 4e12 * 1e6)
    (text,) = bench.decode_bounds([row, {**row, "context": 1024, "decode_graph_ms": 0.1}], 4.0)
    assert text.startswith("mamba-causal, context 64K: 500 us per step as a CUDA graph for 250 GPU operations")
    assert f"{500 / floor:.1f}x below the step" in text
    (text,) = bench.decode_bounds([{**row, "decode_graph_ms": "OOM", "gpu_ops": None}], None)
    assert text == "mamba-causal, context 64K: 2,000 us per step eager"


def test_parse_lengths():
    assert bench.parse_lengths("1K, 2k,300,1M") == (1024, 2048, 300, 1 << 20)
    assert [bench.fmt_length(n) for n in (1024, 65536, 300, 1 << 20)] == ["1K", "64K", "300", "1M"]
    with pytest.raises(Exception, match="4K"):
        bench.parse_lengths("4KB")


# ------------------------------------------------------------------------------------------------ the Transformer
def _reference_forward(model: TransformerBackbone, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The same network written out by hand: explicit softmax attention, no SDPA."""
    batch, length, d = x.shape
    h, dh = model.n_head, d // model.n_head
    for layer in model.layers:
        a = torch.nn.functional.layer_norm(x, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
        q, k, v = (a @ layer.qkv.weight.T + layer.qkv.bias).split(d, dim=-1)
        q, k, v = (t.reshape(batch, length, h, dh).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # (B, H, L, L)
        if causal:
            future = torch.ones(length, length, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, -math.inf)
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, d)
        x = x + o @ layer.proj.weight.T + layer.proj.bias
        m = torch.nn.functional.layer_norm(x, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
        hidden = m @ layer.fc1.weight.T + layer.fc1.bias
        hidden = 0.5 * hidden * (1 + torch.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden**3)))
        x = x + hidden @ layer.fc2.weight.T + layer.fc2.bias
    return torch.nn.functional.layer_norm(x, (d,), model.norm_f.weight, model.norm_f.bias, model.norm_f.eps)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_transformer_matches_hand_written_attention(bidirectional):
    torch.manual_seed(1)
    model = TransformerBackbone(24, 2, n_head=3, bidirectional=bidirectional, dtype=torch.float64)
    for p in model.parameters():  # away from the init's zero biases and unit norms
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    torch.testing.assert_close(model(x), _reference_forward(model, x, causal=not bidirectional))
    # causal outputs ignore later tokens; bidirectional ones do not
    x2 = x.clone()
    x2[:, -1] += torch.randn(24, dtype=torch.float64)  # not a constant shift, which LayerNorm would remove
    changed = (model(x2) - model(x))[:, :-1].abs().amax()
    assert (changed > 1e-3) if bidirectional else (changed == 0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_kv_cache_decoding_equals_full_forward(dtype, tol):
    torch.manual_seed(2)
    model = TransformerBackbone(32, 3, n_head=4, dtype=dtype)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 13, 32, dtype=dtype)
    full = model(x)
    with torch.no_grad():
        cache = model.allocate_inference_cache(3, max_seqlen=16)
        prefill = model(x[:, :5], cache=cache)
        steps = [model.step(x[:, t], cache) for t in range(5, 13)]
    assert cache.seqlen_offset == 13
    decoded = torch.cat([prefill, torch.stack(steps, dim=1)], dim=1)
    torch.testing.assert_close(decoded, full, atol=tol, rtol=tol)
    assert cache.nbytes() == 2 * 3 * 3 * 13 * 32 * x.element_size()  # K and V, layers, batch, tokens, width

    with pytest.raises(ValueError, match="empty cache"):
        model(x[:, :2], cache=cache)
    with pytest.raises(ValueError, match="at most 16 tokens"):
        for _ in range(4):
            model.step(x[:, 0], cache)


def test_transformer_bad_input():
    with pytest.raises(ValueError, match="n_head"):
        TransformerBackbone(30, 1, n_head=4)
    with pytest.raises(TypeError, match="bidirectional"):
        TransformerBackbone(32, 1, bidirectional="add")
    model = TransformerBackbone(32, 1, bidirectional=True)
    with pytest.raises(RuntimeError, match="KV cache"):
        model.allocate_inference_cache(1, 8)
    with pytest.raises(ValueError, match="d_model=32"):
        model(torch.randn(2, 4, 16))


def test_parameter_count_and_matching_depth():
    model = TransformerBackbone(64, 3, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 3 * transformer_layer_parameters(64) + 2 * 64
    # 768 wide: 13 layers (92.1M) come closest to the 24-layer Mamba backbone's 90.5M parameters
    assert matching_n_layer(90_520_320, 768) == 13
    assert matching_n_layer(1, 768) == 1
