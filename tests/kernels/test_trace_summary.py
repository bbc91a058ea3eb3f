"""scripts/decode_gpu_check.py's summary of a fused-step trace (TRACE=1), on synthetic traces with known times."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "decode_gpu_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("decode_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trace(programs: int, barriers: int) -> torch.Tensor:
    """(programs, barriers + 2, 4): clock = global time in ns; program p arrives at barrier i at 1000 (i + 1) + 100 p
    and every program leaves it at 1000 (i + 1) + 300; the start at 0, the end at 1000 (barriers + 1) + 500."""
    t = torch.zeros(programs, barriers + 2, 4, dtype=torch.int64)
    for p in range(programs):
        for i in range(barriers):
            arrive, leave = 1000 * (i + 1) + 100 * p, 1000 * (i + 1) + 300
            t[p, 1 + i] = torch.tensor([arrive, leave, arrive, leave])
        end = 1000 * (barriers + 1) + 500
        t[p, -1] = torch.tensor([end, end, end, end])
    return t


@pytest.mark.parametrize(("per_layer", "names"), [(4, "PHASES"), (3, "MERGED_PHASES"), (2, "SPLIT_PHASES")])
def test_phases_per_layer_follow_the_trace(check, per_layer, names):
    n_layer = 2
    summary, total, resolution = check.summarise_trace(_trace(2, per_layer * n_layer), n_layer)
    assert list(summary) == [*getattr(check, names), "head"]
    first = summary[getattr(check, names)[0]]
    # the first phase of layer 0 starts at the launch (work 1.0 / 1.1 us), of layer 1 at a barrier (0.7 / 0.8 us)
    assert first[0] == pytest.approx((1.1 + 0.8) / 2) and first[1] == pytest.approx((1.0 + 0.7) / 2)
    for name in getattr(check, names)[1:]:
        slowest, median, spread, wait, release = summary[name]
        assert (slowest, median) == (pytest.approx(0.8), pytest.approx(0.7))
        assert (spread, wait, release) == (pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.2))
    assert summary["head"][0] == pytest.approx(1.2)  # from leaving the last barrier to the end
    assert total == pytest.approx((1000 * (per_layer * n_layer + 1) + 500) / 1e3)
    assert resolution > 0


@pytest.mark.parametrize(("per_layer", "names"), [(4, "PHASES"), (2, "SPLIT_PHASES")])
def test_lateness_names_the_program_that_comes_last(check, per_layer, names):
    n_layer = 2
    trace = _trace(3, per_layer * n_layer)
    trace[:, 0, 1] = torch.tensor([40, 7, 13])  # each program's SM beside its start
    trace[2, 1 + per_layer, 3] += 250  # program 2 leaves layer 1's first barrier 250 ns after the others
    late = check.lateness(trace, n_layer)
    assert list(late) == list(getattr(check, names))
    for k, name in enumerate(getattr(check, names)):
        rows = late[name]
        assert rows[:, 0].tolist() == [40, 7, 13]
        assert rows[:, 1].tolist() == pytest.approx([0.0, 100.0, 200.0])  # 100 p ns after program 0, every layer
        assert rows[:, 2].tolist() == [0.0, 0.0, 1.0]  # program 2 is last at every barrier
        # the phase after layer 1's first barrier began 250 ns late for program 2, in one layer of two
        assert rows[:, 3].tolist() == pytest.approx([0.0, 0.0, 125.0 if k == 1 else 0.0])
