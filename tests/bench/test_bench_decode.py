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
