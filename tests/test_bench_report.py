"""The bench report's grading and rows (``bench/report.py``): pure functions of result files, so
table-driven here, with no measurement run. What matters: a difference within a metric's noise band
is never graded a win, and every scenario renders from its declarations alone."""

from __future__ import annotations

import json

import pytest

from bench import report
from bench.__main__ import SCENARIOS
from bench.common import Metric

RPS = Metric("rps", "goodput", "req/s", "higher", noise=0.05)
WAIT = Metric("wait_s", "wait", "s", "lower", noise=0.15)
ERRORS = Metric("errors", "errors", "count", "lower")
RATIO = Metric("rps_ratio", "req/s", "ratio", "higher", noise=0.03)


@pytest.mark.parametrize(
    "metric, hardened, peer, expected",
    [
        (RPS, {"rps": 1000}, {"rps": 1000}, "same"),
        (RPS, {"rps": 1040}, {"rps": 1000}, "noise"),  # 4 % ahead, band 5 %: not a win
        (RPS, {"rps": 960}, {"rps": 1000}, "noise"),
        (RPS, {"rps": 1100}, {"rps": 1000}, "better"),
        (RPS, {"rps": 900}, {"rps": 1000}, "worse"),
        (WAIT, {"wait_s": 2.3}, {"wait_s": 2.2}, "noise"),  # absolute band for seconds
        (WAIT, {"wait_s": 2.0}, {"wait_s": 2.4}, "better"),
        (
            ERRORS,
            {"errors": 1},
            {"errors": 0},
            "worse",
        ),  # counts have no band: one more error is worse
        (ERRORS, {"errors": 0}, {"errors": 163}, "better"),
        (ERRORS, {"errors": True}, {"errors": False}, "worse"),
        (ERRORS, {"errors": None}, {"errors": 3}, None),  # not applicable: not graded
        # A yes/no check the peer never reached (its master died first) is graded against passing it.
        (
            Metric("good", "good HUP serves", "count", "higher"),
            {"good": False},
            {"good": None},
            "worse",
        ),
        (
            Metric("good", "good HUP serves", "count", "higher"),
            {"good": True},
            {"good": None},
            "same",
        ),
        (ERRORS, {}, {"errors": 3}, None),
        # A measured band (quartiles of per-round ratios) replaces the declared noise.
        (RATIO, {"rps_ratio": 1.06, "rps_ratio_band": [0.99, 1.08]}, {"rps_ratio": 1.0}, "noise"),
        (RATIO, {"rps_ratio": 1.06, "rps_ratio_band": [1.02, 1.08]}, {"rps_ratio": 1.0}, "better"),
        (RATIO, {"rps_ratio": 0.95, "rps_ratio_band": [0.93, 0.97]}, {"rps_ratio": 1.0}, "worse"),
        (
            RATIO,
            {"rps_ratio": 1.0, "rps_ratio_band": [0.9, 1.1]},
            {"rps_ratio": 0.7, "rps_ratio_band": [0.65, 0.75]},
            "better",
        ),
        (
            RATIO,
            {"rps_ratio": 1.0, "rps_ratio_band": [0.9, 1.1]},
            {"rps_ratio": 1.05, "rps_ratio_band": [1.08, 1.2]},
            "noise",
        ),  # bands overlap
    ],
)
def test_compare_never_grades_noise_a_win(metric, hardened, peer, expected):
    assert report.compare(metric, hardened, peer) == expected


class Scenario:
    NAME, TITLE, SETUP = "demo", "Demo", "{connections} connections"
    METRICS = (RPS, ERRORS)


@pytest.mark.parametrize(
    "result, verdict, cell",
    [
        (None, report.NA, "not run"),
        ({"error": "boom"}, report.NO, "failed"),
        ({"config": {}, "headline": {"uvicorn": {"rps": 1, "errors": 0}}}, report.NA, "not run"),
        (
            {
                "config": {"connections": 8},
                "headline": {
                    "hardened": {"rps": 1030, "errors": 0},
                    "uvicorn": {"rps": 1000, "errors": 0},
                },
            },
            report.NOISE,
            "1.03×",
        ),
        (
            {
                "config": {"connections": 8},
                "headline": {
                    "hardened": {"rps": 1200, "errors": 0},
                    "uvicorn": {"rps": 1000, "errors": 0},
                    "asgi": {"rps": 700, "errors": 2},
                },
            },
            report.YES,
            "1.20×",
        ),
        (
            {
                "config": {"connections": 8},
                "headline": {
                    "hardened": {"rps": 1200, "errors": 1},
                    "uvicorn": {"rps": 1000, "errors": 0},
                },
            },
            report.NO,
            "**1** errors",
        ),
        # A result written before its headline existed: n/a, not a failure, and a note to re-run it.
        ({"config": {"connections": 8}, "per_class": {"hardened": {}}}, report.NA, "n/a"),
    ],
)
def test_row_from_declarations(result, verdict, cell):
    row = report.row(Scenario, "demo", result)
    assert row["verdict"] == verdict
    assert cell in row["cells"]["hardened"]
    if verdict != report.NA:  # every row that is not a plain yes is explained under the table
        assert (row["notes"] == []) == (verdict == report.YES)


def test_every_scenario_declares_what_the_report_draws():
    for module in SCENARIOS:
        assert module.TITLE and module.SETUP and module.METRICS, module.NAME
        for metric in module.METRICS:
            assert metric.unit in ("req/s", "ms", "s", "count", "MiB", "ratio", "%"), (
                module.NAME,
                metric,
            )
            assert metric.better in ("higher", "lower"), (module.NAME, metric)


def test_report_renders_variants_and_missing_files(tmp_path):
    headline = {
        "hardened": {"rps_ratio": 1.02, "rps_ratio_band": [0.97, 1.05], "errors": 0},
        "uvicorn": {"rps_ratio": 1.0, "errors": 0},
    }
    for name in ("overhead", "overhead-forwarded", "overhead-memory-limit=4gib"):
        (tmp_path / f"{name}.json").write_text(
            json.dumps(
                {
                    "scenario": "overhead",
                    "variant": name.partition("-")[2] or "plain",
                    "headline": headline,
                    "config": {
                        "path": "/",
                        "workers": 2,
                        "connections": 64,
                        "rounds": 5,
                        "duration_s": 6,
                    },
                }
            )
        )
    report.run(publish=False, results=tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| **Overhead, forwarded**" in text and "| **Overhead, memory-limit=4gib**" in text
    assert text.count(report.NOISE) == 3  # the band straddles 1.00 in all three: never a win
    assert "| **HUP reloads**<br><sub></sub> | not run |" in text
