"""Smoke tests of the method benchmarks: they run on tiny settings and print their figures as JSON.

The figures themselves are machine-dependent and are recorded in docs/benchmarks.md, not checked here.
"""

import json
import os

import pytest
import torch

from cast import cli


def run_bench(capsys, *argv: str) -> dict:
    assert cli.main(["bench", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_step_prints_ratios(capsys):
    threads = torch.get_num_threads()
    result = run_bench(
        capsys, "step", "--arch", "resnet18", "--image_size", "32", "--batch_size", "4",
        "--queue_size", "8", "--steps", "1", "--warmup", "0", "--threads", "1", "--released",
    )
    seconds = result["seconds_per_step"]
    assert set(seconds) == {"moco", "cast", "cast_released"}
    assert all(value > 0 for value in seconds.values())
    assert result["cast_over_moco"] == pytest.approx(seconds["cast"] / seconds["moco"], rel=0.01)
    assert "released_over_moco" in result
    torch.set_num_threads(threads)


def test_bench_crops_prints_rates_and_restores_affinity(capsys):
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    result = run_bench(capsys, "crops", "--seconds", "0.05", "--image_size", "64")
    assert result["image_width"] == 640
    assert result["image_height"] == 480
    assert result["box_pairs_per_second"] > 0
    assert result["samples_per_second"]["cast"] > 0
    assert result["samples_per_second"]["moco"] > 0
    assert 0 <= result["fallback_fraction"] < 0.05
    if before is not None:
        assert os.sched_getaffinity(0) == before


def test_bench_step_rejects_bad_option(capsys):
    assert cli.main(["bench", "step", "--batch_size", "0"]) == 1
