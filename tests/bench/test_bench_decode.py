"""The decoding benchmark's command line: --tune's settings."""

from __future__ import annotations

import pytest

from seqbackbone.bench.decode import parse_args, parse_tune


def test_tune_settings_parse_to_integers():
    assert parse_tune([]) == {}
    assert parse_tune(["SPLIT=0", "AHEAD=-1", "COPIES=4"]) == {"SPLIT": 0, "AHEAD": -1, "COPIES": 4}
    assert parse_args(["--tune", "SPLIT=1", "FIXED=1"]).tune == ["SPLIT=1", "FIXED=1"]
    for bad in (["SPLIT"], ["SPLIT=on"], ["=1"], ["AHEAD=1.5"]):
        with pytest.raises(ValueError, match="--tune takes KEY=VALUE"):
            parse_tune(bad)


def test_step_time_takes_the_fastest_runs_of_each_length(monkeypatch):
    """A step costs 100 us over 1 s of fixed costs; one slow run of either length (the first short one, the last
    long one) moves the estimate not at all, where a median of two would have moved it by half the delay."""
    from seqbackbone.bench import decode as bench

    delays = {8: [0.5, 0.0], 16: [0.0, 0.3]}
    calls = []

    def fake_generate(model, prompt, new_tokens, cuda_graph, compile):
        calls.append(new_tokens)
        return 1.0 + 100e-6 * new_tokens + delays[new_tokens].pop(0)

    monkeypatch.setattr(bench, "time_generate", fake_generate)
    assert bench.step_time(None, None, 8, True, False, repeats=2) == pytest.approx(100e-6)
    assert calls == [8, 16, 8, 16]
