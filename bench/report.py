"""``python -m bench report``: the Markdown table (plots: :mod:`bench.plots`) from ``bench/results/*.json``.

Every row comes from a scenario module's ``TITLE``, ``SETUP`` and ``METRICS`` (:class:`bench.common.Metric`)
alone, read against ``result["headline"][<class>]`` of ``bench/results/<NAME>.json`` and of each variant
``<NAME>-<variant>.json`` (a row each). No result file yet: "not run"; a headline key it lacks: "n/a".

Cells: ratios to UvicornWorker first, absolute figures second. The last column says whether
hardened_worker is at least as good as both peers, metric by metric, and a difference within the
metric's noise band is never a win: the declared ``noise``, or, where the headline carries
``<key>_band`` (the quartiles of per-round ratios), whether that band reaches the peer's value.
Every row that is not a plain yes gets a note below the table.

Writes ``bench/results/report.md`` (plots beside it) and publishes ``bench/REPORT.md`` with the
plots in ``bench/report/`` (the documentation site's Benchmarks page includes that file).
"""

from __future__ import annotations

import datetime
import importlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from bench import common, plots
from bench.common import Metric

NAME = "report"
PUBLISHED, PUBLISHED_PLOTS = common.ROOT / "bench" / "REPORT.md", common.ROOT / "bench" / "report"

CLASSES = ("hardened", "uvicorn", "asgi")
PEERS = ("uvicorn", "asgi")
LABELS = {
    "hardened": "`hardened_worker.Worker`",
    "uvicorn": "`uvicorn_worker.UvicornWorker`",
    "asgi": "gunicorn `-k asgi`",
}
YES, NOISE, NO, NA = "✅ yes", "≈ within noise", "❌ no", "n/a"
RELATIVE = {"req/s", "ratio", "%"}  # units whose noise band is relative
RATIO_FIRST = {"req/s", "ms", "s", "MiB"}  # units shown as a ratio to UvicornWorker first


def scenarios() -> list:
    """The scenario modules, in ``python -m bench``'s order (the table's)."""
    return [m for m in importlib.import_module("bench.__main__").SCENARIOS if hasattr(m, "METRICS")]


# --- one metric -----------------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """A figure as a float (yes/no as 1/0), None if it is none (or NaN)."""
    return float(value) if isinstance(value, (int, float)) and value == value else None


def absolute(metric: Metric, value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "n/a", True: "yes", False: "no"}[value]
    if metric.unit in ("ratio", "count"):
        return f"{value:.2f}×" if metric.unit == "ratio" else f"{value:,.0f}"
    digits = 0 if abs(value) >= 100 or metric.unit == "req/s" else (2 if metric.unit == "s" else 1)
    return f"{value:,.{digits}f} {metric.unit}"


def compare(metric: Metric, h: dict, p: dict) -> str | None:
    """ "better", "same", "noise" or "worse" for hardened's figure against a peer's (None: unknown)."""
    hv, pv = number(h.get(metric.key)), number(p.get(metric.key))
    if pv is None and isinstance(
        h.get(metric.key), bool
    ):  # a check the peer never reached: against passing
        pv = float(metric.better == "higher")
    if hv is None or pv is None:
        return None
    if hv == pv:
        return "same"
    hb, pb = (
        v if v and None not in v else None
        for v in (h.get(f"{metric.key}_band"), p.get(f"{metric.key}_band"))
    )
    if hb and pb:  # measured bands: the same when they overlap
        same = hb[0] <= pb[1] and pb[0] <= hb[1]
    elif hb or pb:  # one measured band: the same when it reaches the other figure
        same = hb[0] <= pv <= hb[1] if hb else pb[0] <= hv <= pb[1]
    else:
        same = abs(hv - pv) <= (metric.noise * abs(pv) if metric.unit in RELATIVE else metric.noise)
    return "noise" if same else "better" if (hv > pv) == (metric.better == "higher") else "worse"


# --- one row ----------------------------------------------------------------------------------------


def setup_text(module: Any, result: dict) -> str:
    """``SETUP`` filled in from the result's ``config`` where it names ``{fields}`` of it."""
    try:
        return module.SETUP.format_map(result.get("config", {}))
    except (KeyError, IndexError, ValueError, AttributeError):
        return re.sub(r"\{[^}]*\}", "…", module.SETUP)


def cell(metrics: list, figures: dict, base: dict) -> str:
    """A class's figures: ratios to UvicornWorker (or counts, or yes/no) first, absolute values second.
    A figure present as None does not apply to this class (a cause it lacks) and is left out."""
    first, second = [], []
    for m in metrics:
        value = figures.get(m.key, "n/a")
        if value is None:
            continue
        if value == "n/a":
            first.append(f"{m.label} **n/a**")
        elif isinstance(value, bool):
            first.append(f"{m.label}: **{absolute(m, value)}**")
        elif m.unit in RATIO_FIRST:
            r = common.ratio(number(value), number(base.get(m.key)))
            first.append(f"**{'n/a' if r is None else f'{r:.2f}×'}** {m.label}")
            second.append(f"{m.label} {absolute(m, value)}")
        else:
            band = figures.get(f"{m.key}_band")
            band = f" ({band[0]:.2f}–{band[1]:.2f})" if band and None not in band else ""
            first.append(f"**{absolute(m, value)}** {m.label}{band}")
    return ", ".join(first) + ("<br>" + ", ".join(second) if second else "")


def row(module: Any, file: str, result: dict | None) -> dict:
    variant = file[len(module.NAME) + 1 :] if file != module.NAME else ""
    title = module.TITLE + (
        f", {result.get('variant', variant) if result else variant}" if variant else ""
    )
    out = {
        "title": title,
        "setup": "",
        "cells": {c: "not run" for c in CLASSES},
        "verdict": NA,
        "notes": [],
    }
    if result is None or "error" in result:
        out["notes"].append(
            f"**{title}**: the scenario failed: `{result['error']}`."
            if result
            else f"**{title}**: no result file; run `.venv/bin/python -m bench {module.NAME}`."
        )
        return {**out, "cells": {c: "failed" for c in CLASSES}, "verdict": NO} if result else out
    out["setup"] = setup_text(module, result)
    headline = result.get("headline", {})
    base = headline.get(common.BASELINE, {})
    missing = [m.key for m in module.METRICS if not any(m.key in v for v in headline.values())]
    shown = [m for m in module.METRICS if m.key not in missing]
    for cls in CLASSES:  # a class a legacy headline lacks did run: its figures are just not there
        out["cells"][cls] = (
            (cell(shown, headline[cls], base) or "n/a")
            if cls in headline
            else "n/a"
            if missing
            else "not run"
        )
    if missing:
        out["notes"].append(
            f"**{title}**: `{file}.json` has no {', '.join(f'`{k}`' for k in missing)} "
            f"(written before these figures existed): n/a until "
            f"`.venv/bin/{result.get('command', 'python -m bench ' + module.NAME)}` runs again."
        )
    h = headline.get("hardened")
    if h is None:
        return out
    graded = {
        (m, peer): compare(m, h, headline[peer])
        for m in module.METRICS
        for peer in PEERS
        if peer in headline
    }
    worse = [(m, p) for (m, p), g in graded.items() if g == "worse"]
    noisy = [(m, p) for (m, p), g in graded.items() if g == "noise"]
    known = [g for g in graded.values() if g is not None]
    out["verdict"] = NO if worse else NOISE if noisy else YES if known else NA
    says = []
    for what, pairs in (("behind", worse), ("within noise (not graded a win)", noisy)):
        if pairs:
            says.append(
                f"{what} on "
                + "; ".join(
                    f"{m.label} against {plots.PLOT_LABELS[p]} ({absolute(m, h.get(m.key))} against "
                    f"{absolute(m, headline[p].get(m.key))})"
                    for m, p in pairs
                )
            )
    if says:  # a module's NOTE says what its figures alone cannot
        out["notes"].append(
            f"**{title}**: hardened_worker is "
            + "; ".join(says)
            + (". " + getattr(module, "NOTE", "")).rstrip()
        )
    return out


def rows(found: dict) -> list[dict]:
    out = []
    for module in scenarios():
        files = [module.NAME] + sorted(n for n in found if n.startswith(module.NAME + "-"))
        out += [row(module, name, found.get(name)) for name in files]
    return out


# --- the document ---------------------------------------------------------------------------------


def load(results: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(results.glob("*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            found[path.stem] = {"error": f"unreadable {path.name}: {exc}"}
    return found


def _when(text: str | None) -> str:
    try:
        moment = datetime.datetime.fromisoformat(text or "")
    except ValueError:
        return text or "unknown date"
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def header(found: dict) -> list[str]:
    names = {m.NAME for m in scenarios()}
    runs = {name: d for name, d in found.items() if d.get("scenario") in names and "machine" in d}
    anchor = (
        found["all"]
        if "machine" in found.get("all", {})
        else max(runs.values(), key=lambda d: d["machine"].get("date", ""), default=None)
    )
    if anchor is None:
        return ["No results yet: run `make bench`.", ""]
    m, repo = anchor["machine"], anchor["machine"].get("repo", {})
    p = m.get("packages", {})
    changed = repo.get("modified_package_files")
    dirty = (
        f" with uncommitted changes to {', '.join(f'`{f}`' for f in changed[:6])}"
        if changed
        else ", no uncommitted changes to the package"
        if changed is not None
        else ""
    )
    command = anchor.get("command", "python -m bench all")
    how = (
        "`make bench` (which runs `.venv/bin/python -m bench all`)"
        if command.strip() == "python -m bench all"
        else f"`.venv/bin/{command}`"
    )
    took = (
        f" (run started {_when(anchor.get('run_id'))}, took {anchor['duration_s'] / 60:.1f} min)"
        if anchor.get("scenario") == "all" and anchor.get("duration_s")
        else ""
    )
    lines = [
        f"- **Date**: {_when(m.get('date'))}{took}",
        f"- **Command**: {how}, from the repository root",
        f"- **Machine**: {m.get('platform')}, {m.get('cpus_usable')} usable CPUs of {m.get('cpu_count')}, "
        f"{m.get('memory_total_gib')} GiB RAM; load average "
        f"{', '.join(f'{v:.1f}' for v in m.get('load_average', []))} at the end. Shared with other work: "
        f"absolute figures drift a lot within minutes; ratios between neighbouring runs much less",
        f"- **Software**: Python {m.get('python')}, "
        + ", ".join(f"{k} {p.get(k)}" for k in common.PACKAGES)
        + f" (commit `{(repo.get('commit') or 'unknown')[:12]}`{dirty}); "
        f"{re.sub(r' Copyright.*', '', m.get('wrk') or 'wrk unknown')}; "
        f"{(m.get('nginx') or 'nginx unknown').replace('nginx version: ', '')}",
    ]
    stray = [
        f"`{name}.json` ({_when(d['machine'].get('date'))}, `{d.get('command', '?')}`)"
        for name, d in runs.items()
        if d.get("run_id") != anchor.get("run_id")
    ]
    if stray:
        lines.append(f"- **Not from that run**: {', '.join(stray)}")
    return lines + [""]


def render(
    found: dict, table: list[dict], made: dict, problems: list, image_dir: str, readme: str
) -> str:
    out = [
        "# Benchmark: hardened_worker against UvicornWorker and gunicorn's asgi worker",
        "",
        "`hardened_worker.Worker`, `uvicorn_worker.UvicornWorker` and gunicorn's own `-k asgi`, on the "
        "same app (`tests/apps/testapp.py`) on the same machine; each gunicorn master in its own process "
        f"group, killed by pid at the end. Method and every knob: [bench/README.md]({readme}).",
        "",
        *header(found),
        "Each cell: **ratios first** (to UvicornWorker; a figure that is itself a ratio shows the "
        "quartiles of its per-round ratios in brackets), absolute figures second. The last column: is "
        "hardened_worker at least as good as both peers on every figure of that row? A difference within "
        "the figure's noise band is never graded a win. Every row that is not a plain yes is explained "
        "below the table.",
        "",
        "| scenario | " + " | ".join(LABELS[c] for c in CLASSES) + " | hardened ≥ both? |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| **{r['title']}**<br><sub>{r['setup']}</sub> | "
        + " | ".join(r["cells"][c] for c in CLASSES)
        + f" | {r['verdict']} |"
        for r in table
    ]
    notes = [note for r in table for note in r["notes"]]
    out += (
        ["", "## Where hardened_worker is not ahead", "", *(f"- {note}" for note in notes), ""]
        if notes
        else ["", "hardened_worker is at least as good as both peers on every row of this run.", ""]
    )
    if made or problems:
        out += ["## Plots", ""]
        for name, caption in made.items():
            out += [f"### {caption}", "", f"![{caption}]({image_dir}{name})", ""]
        out += [f"- {problem}\n" for problem in problems]
    out += [
        "## Reproduce",
        "",
        "```sh",
        "make bench                          # everything, then this report (under 15 min on 2 cores)",
        ".venv/bin/python -m bench hup       # one scenario; see bench/README.md for each one's knobs",
        ".venv/bin/python -m bench report    # this report again from bench/results/*.json",
        "```",
        "",
        "The raw figures (and the machine description) are in `bench/results/<scenario>.json`.",
        "",
    ]
    return "\n".join(out)


def run(publish: bool = True, results: Path = common.RESULTS) -> dict:
    found = load(results)
    table = rows(found)
    if all(r["setup"] == "" for r in table):
        raise SystemExit(f"no results in {results}: run `python -m bench all` first")
    made, problems = plots.make_plots(found, results)
    for problem in problems:
        common.log(f"report: {problem}")
    local = results / "report.md"
    local.write_text(render(found, table, made, problems, image_dir="", readme="../README.md"))
    written = [str(local).replace(f"{common.ROOT}/", "")]
    if publish:
        PUBLISHED_PLOTS.mkdir(exist_ok=True)
        for name in plots.PLOTS:
            if name in made:
                shutil.copyfile(results / name, PUBLISHED_PLOTS / name)
            elif (PUBLISHED_PLOTS / name).exists():
                (
                    PUBLISHED_PLOTS / name
                ).unlink()  # a plot this report could not draw must not look current
        PUBLISHED.write_text(
            render(found, table, made, problems, image_dir="report/", readme="README.md")
        )
        written += [str(PUBLISHED).replace(f"{common.ROOT}/", "")]
        written += [f"bench/report/{name}" for name in made]
    common.log(f"report: wrote {', '.join(written)}")
    return {"scenario": NAME, "written": written, "plots": sorted(made), "problems": problems}
