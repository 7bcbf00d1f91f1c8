"""`scenario stats`: measured fractions, nesting flag, JSON shape and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_scenarios import tiny_split  # tests/ is on sys.path (rootdir-less test modules)

from mer_bench.scenarios import get_scenario
from mer_bench.scenarios.stats import format_stats, split_stats


def big_split(n=300):
    return tiny_split(n=n, lt=40, la=60, lv=50, seed=1)


def test_split_stats_measures_rates_and_nesting():
    sc = get_scenario("rmfm").with_rates([0.0, 0.3, 1.0])
    out = split_stats(sc, big_split(), seed=1111, batch_size=64)
    assert out["nested"] is True
    assert set(out["missing"]) == {"0.0", "0.3", "1.0"}
    for m in ("text", "audio", "vision"):
        assert out["missing"]["0.0"][m] == 0.0
        assert abs(out["missing"]["0.3"][m] - 0.3) < 0.02
        assert out["missing"]["1.0"][m] == 1.0
        assert out["fully_missing"]["1.0"][m] == 1.0
        assert out["fully_missing"]["0.0"][m] == 0.0


def test_split_stats_batching_does_not_change_the_answer():
    sc = get_scenario("rmm").with_rates([0.2, 0.6])
    a = split_stats(sc, big_split(), batch_size=7)
    b = split_stats(sc, big_split(), batch_size=256)
    assert a == b
    assert abs(a["fully_missing"]["0.6"]["audio"] - 0.6) < 0.1


def test_split_stats_smm_patterns():
    out = split_stats(get_scenario("smm"), big_split(60))
    assert list(out["missing"]) == ["L", "A", "V", "LA", "LV", "AV", "LAV"]
    assert out["missing"]["LA"] == {"text": 0.0, "audio": 0.0, "vision": 1.0}
    assert out["fully_missing"]["V"] == {"text": 1.0, "audio": 1.0, "vision": 0.0}
    assert out["nested"] is True
    stats = {"scenario": "smm", "dataset": "x", "variant": "unaligned", "seed": 1,
             "rates": list(out["missing"]), **out}
    assert format_stats(stats).splitlines()[2].split()[0] == "kept"


def test_format_stats_is_a_table():
    sc = get_scenario("rmfm").with_rates([0.0, 0.5])
    stats = {"scenario": "rmfm", "dataset": "x", "variant": "unaligned", "seed": 1,
             "rates": [0.0, 0.5], **split_stats(sc, big_split(50))}
    text = format_stats(stats)
    assert "nested across the grid: yes" in text and "0.5" in text and "%" in text


def _has_load_dataset() -> bool:
    from mer_bench import datasets as registry

    return hasattr(registry, "load_dataset")


needs_data = pytest.mark.skipif(not _has_load_dataset(), reason="load_dataset not written yet")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mer_bench.cli", *args],
                          capture_output=True, text=True, timeout=300)


@needs_data
def test_cli_scenario_stats_json():
    r = cli("scenario", "stats", "rmfm", "--dataset", "synth-mosi", "--scale", "0.05",
            "--rates", "0,0.3,1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == ["scenario", "dataset", "variant", "seed", "rates", "nested", "missing",
                         "fully_missing"]
    assert out["scenario"] == "rmfm" and out["dataset"] == "synth-mosi"
    assert out["variant"] == "unaligned" and out["seed"] == 1111
    assert out["rates"] == [0.0, 0.3, 1.0] and out["nested"] is True
    assert set(out["missing"]) == {"0.0", "0.3", "1.0"}
    for m in ("text", "audio", "vision"):
        assert out["missing"]["0.0"][m] == 0.0 and out["missing"]["1.0"][m] == 1.0
        assert 0.2 < out["missing"]["0.3"][m] < 0.4
        assert np.isclose(out["fully_missing"]["1.0"][m], 1.0)


@needs_data
def test_cli_tmfm_on_unaligned_is_one_line_exit_2():
    r = cli("scenario", "stats", "tmfm", "--dataset", "synth-mosi", "--scale", "0.05")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs aligned data" in lines[0]
