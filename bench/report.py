"""``python -m bench report``: the Markdown table and the PNG plots, from ``bench/results/*.json``.

Writes ``bench/results/report.md`` with ``leak_rss.png``, ``hup_timeline.png`` and
``nginx_timeline.png`` beside it, then publishes the same report as ``bench/REPORT.md`` with the
plots copied to ``bench/report/`` (the committed artifact, independent of the results directory),
and ``bench/report/README-section.md``: the same text a heading level down with paths from the
repository root, to paste into the top-level README.

Rows are scenarios, columns the worker classes, each cell ratios first (against UvicornWorker, or
against the same master without reloads), absolute figures second. The last column says whether
hardened_worker is at least as good as both peers on that row; every row where it is not (or only
within this machine's noise) gets a plain note below the table. Plots need matplotlib (the
``bench`` extra); without it the report is written without them and says so.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from bench import common

NAME = "report"
BENCH = Path(__file__).resolve().parent
PUBLISHED = BENCH / "REPORT.md"
PUBLISHED_PLOTS = BENCH / "report"
SECTION = PUBLISHED_PLOTS / "README-section.md"

CLASSES = ("hardened", "uvicorn", "asgi")
LABELS = {"hardened": "`hardened_worker.Worker`", "uvicorn": "`uvicorn_worker.UvicornWorker`",
          "asgi": "gunicorn `-k asgi`"}
PLOT_LABELS = {"hardened": "hardened_worker.Worker", "uvicorn": "uvicorn_worker.UvicornWorker",
               "asgi": "gunicorn -k asgi"}
COLORS = {"hardened": "#1b9e77", "uvicorn": "#3a6fb0", "asgi": "#d95f02"}

# What counts as "the same" on this shared 2-core machine (see the notes the report writes).
RPS_NOISE = 0.05       # throughput ratios within 5% of the best peer
P99_NOISE = 0.15       # p99 ratios within 15% of the best peer
TIME_NOISE_S = 0.15    # times within 150 ms of the best peer

YES, NOISE, NO, NA = "✅ yes", "≈ within noise", "❌ no", "n/a"

# Scenario result files, in table order.
FILES = ("overhead", "overhead-forwarded", "hup", "bad_deploy", "drain", "leak", "hung", "nginx", "recycle")
PLOTS = ("leak_rss.png", "hup_timeline.png", "nginx_timeline.png")


# --- formatting ---------------------------------------------------------------------------------


def x(value: Optional[float], digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}×"
    if value >= 10:
        return f"{value:.1f}×"
    return f"{value:.{digits}f}×"


def n(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def ms(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def secs(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def mib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return common.ratio(a, b)


def yesno(flag: Any) -> str:
    return "**yes**" if flag else "**no**"


# --- loading ------------------------------------------------------------------------------------


def load(results: Path) -> dict[str, dict]:
    found = {}
    for name in (*FILES, "all"):
        path = results / f"{name}.json"
        if path.exists():
            try:
                found[name] = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                found[name] = {"error": f"unreadable {path.name}: {exc}"}
    return found


# --- rows ---------------------------------------------------------------------------------------


class Row:
    def __init__(self, title: str, setup: str) -> None:
        self.title = title
        self.setup = setup
        self.cells: dict[str, str] = {c: "not run" for c in CLASSES}
        self.verdict = NA
        self.notes: list[str] = []


def _missing(row: Row, data: Optional[dict]) -> Optional[Row]:
    if data is None:
        row.cells = {c: "not run" for c in CLASSES}
        row.notes.append(f"**{row.title}**: no result file; run `python -m bench all`.")
        return row
    if "error" in data:
        row.cells = {c: "failed" for c in CLASSES}
        row.verdict = NO
        row.notes.append(f"**{row.title}**: the scenario failed: `{data['error']}`.")
        return row
    return None


def overhead_row(data: Optional[dict], forwarded: bool) -> Row:
    title = "Overhead, forwarded headers" if forwarded else "Overhead"
    row = Row(title, "")
    if _missing(row, data):
        return row
    cfg = data["config"]
    row.setup = (f"`GET {cfg['path']}`, {cfg['workers']} workers, wrk {cfg['connections']} connections; median "
                 f"of {cfg['rounds']} rounds × {cfg['duration_s']} s, classes alternating")
    if forwarded:
        row.setup += "; every request has `X-Forwarded-For: 203.0.113.7, 10.0.0.1`, `X-Forwarded-Proto: https`"
    ratios, med, rounds = data.get("ratios", {}), data["absolute_medians"], data["rounds"]
    saw = data.get("app_saw_with_forwarded_headers", {})
    rps_r = {"uvicorn": 1.0}
    p99_r = {"uvicorn": 1.0}
    cpu_r = {"uvicorn": 1.0}
    for cls in CLASSES:
        if cls not in med:
            continue
        if cls != "uvicorn":
            r = ratios.get(f"{cls}/uvicorn", {})
            rps_r[cls], p99_r[cls] = r.get("median_rps_ratio"), r.get("median_p99_ratio")
            cpu_r[cls] = r.get("median_cpu_per_request_ratio")
        m = med[cls]
        cpu = f", **{x(cpu_r[cls])}** CPU/request" if cpu_r.get(cls) is not None else ""
        cell = (f"**{x(rps_r[cls])}** req/s, **{x(p99_r[cls])}** p99{cpu}<br>"
                f"{n(m['rps'])} req/s, p99 {ms(m['p99_ms'])}")
        if m.get("socket_errors") or m.get("non_2xx"):
            cell += f"; **{m['socket_errors']}** socket errors, **{m['non_2xx']}** non-2xx"
        if cls in saw:
            s = saw[cls]
            client = (s.get("client") or ["?"])[0]
            cell += f"<br>app saw client {client}, {s.get('scheme')}"
        row.cells[cls] = cell
    if "hardened" not in med or "uvicorn" not in med:
        return row
    peers = [c for c in ("uvicorn", "asgi") if c in med]
    best_rps = max(rps_r[c] for c in peers if rps_r.get(c) is not None)
    best_p99 = min(p99_r[c] for c in peers if p99_r.get(c) is not None)
    h_rps, h_p99 = rps_r["hardened"], p99_r["hardened"]
    per_round = [r["ratios_vs_uvicorn"]["hardened"] for r in rounds if "ratios_vs_uvicorn" in r]
    rps_range = (min(r["rps"] for r in per_round), max(r["rps"] for r in per_round)) if per_round else None
    p99_range = (min(r["p99"] for r in per_round), max(r["p99"] for r in per_round)) if per_round else None
    uv = [r["uvicorn"]["rps"] for r in rounds]
    spread = (max(uv) / min(uv) - 1) if uv and min(uv) else None
    context = ""
    if rps_range and p99_range:
        context = (f"hardened/uvicorn per round: req/s {rps_range[0]:.2f}–{rps_range[1]:.2f}, "
                   f"p99 {p99_range[0]:.2f}–{p99_range[1]:.2f}")
        if spread is not None:
            context += f"; UvicornWorker's own rounds varied by up to {spread:.0%}"
    # Within noise: the median is within a few percent of the best peer, or the per-round ratios to
    # UvicornWorker (the best peer here) fall on both sides of parity.
    rps_par = h_rps >= best_rps * (1 - RPS_NOISE) or (
        best_rps == 1.0 and rps_range is not None and rps_range[0] <= 1.0 <= rps_range[1])
    p99_par = h_p99 <= best_p99 * (1 + P99_NOISE) or (
        best_p99 == 1.0 and p99_range is not None and p99_range[0] <= 1.0 <= p99_range[1])
    behind = []
    if h_rps < best_rps:
        behind.append(f"{x(h_rps)} UvicornWorker's requests/s" if best_rps == 1.0
                      else f"{x(h_rps)} UvicornWorker's requests/s (best peer {x(best_rps)})")
    if h_p99 > best_p99:
        behind.append(f"{x(h_p99)} UvicornWorker's p99" if best_p99 == 1.0
                      else f"{x(h_p99)} UvicornWorker's p99 (best peer {x(best_p99)})")
    rerun = f"`.venv/bin/python -m bench overhead{' --forwarded' if forwarded else ''} --rounds 9`"
    band = ratios.get("hardened/uvicorn", {}).get("rps_ratio_band") or [None, None]
    if not behind and band[0] is not None and band[0] <= 1.0:
        # Ahead on the median, but the per-round ratios' lower quartile is at or below parity:
        # not a win this run can tell from the machine's noise.
        row.verdict = NOISE
        row.notes.append(
            f"**{title}**: hardened_worker's median is {x(h_rps)} UvicornWorker's requests/s, but a "
            f"quarter of the rounds or more were at or below parity (per-round quartiles "
            f"{band[0]:.2f}–{band[1]:.2f}; {context}): within noise, not graded a win.")
    elif not behind:
        row.verdict = YES
    elif rps_par and p99_par:
        row.verdict = NOISE
        row.notes.append(
            f"**{title}**: hardened_worker's median is {' and '.join(behind)}: behind on paper, but "
            f"not a difference this run can tell from the machine's noise ({context}). {rerun} "
            f"gives a tighter figure.")
    else:
        row.verdict = NO
        consistent = rps_range is not None and rps_range[1] < 1 - RPS_NOISE
        row.notes.append(
            f"**{title}**: hardened_worker is behind: {' and '.join(behind)} ({context}). "
            + ("It was behind in every round, so this is a measured cost, not the machine's noise."
               if consistent else f"Not every round agrees; re-run {rerun} before believing it."))
    if h_rps is not None and any(med[c].get("socket_errors") or med[c].get("non_2xx") for c in ("hardened",)):
        row.verdict = NO
        row.notes.append(f"**{title}**: hardened_worker had errors under plain load.")
    if forwarded and saw:
        partial = [c for c in saw if (saw[c].get("client") or ["?"])[0] == "127.0.0.1"
                   or saw[c].get("scheme") != "https"]
        if "hardened" in partial:
            row.verdict = NO
            row.notes.append("**Overhead, forwarded headers**: hardened_worker did **not** apply the "
                             "trusted X-Forwarded-For/-Proto (the app saw client "
                             f"{(saw['hardened'].get('client') or ['?'])[0]}, scheme "
                             f"{saw['hardened'].get('scheme')}).")
        others = [c for c in partial if c != "hardened"]
        if others:
            def what(c: str) -> str:
                client = (saw[c].get("client") or ["?"])[0]
                kept = [h for h, ignored in (("X-Forwarded-For", client == "127.0.0.1"),
                                             ("X-Forwarded-Proto", saw[c].get("scheme") != "https")) if ignored]
                return (f"{PLOT_LABELS[c]} ignored {' and '.join(kept)} (the app saw client {client}, "
                        f"scheme {saw[c].get('scheme')})")
            row.notes.append(
                "**Overhead, forwarded headers**: not every class does the same work on this row: "
                + "; ".join(what(c) for c in others) + ", so its figures are for less work.")
    return row


def hup_row(data: Optional[dict]) -> Row:
    row = Row("HUP reloads", "")
    if _missing(row, data):
        return row
    cfg = data["config"]
    row.setup = (f"HUP every {cfg['hup_interval_s']:g} s for {cfg['duration_s']} s under wrk "
                 f"({cfg['connections']} connections), app startup {cfg['startup_delay_s']:g} s; "
                 f"p99 against the same master's {cfg['baseline_duration_s']} s without HUPs")
    pc = data["per_class"]
    errors = {}
    for cls in CLASSES:
        if cls not in pc:
            continue
        v = pc[cls]
        total = v["socket_errors"] + v["non_2xx"]
        client = v.get("timeline", {})
        errors[cls] = total + (client.get("errors") or 0)
        cell = (f"**{n(total)}** errors, p99 **{x(v['p99_ratio_reload_vs_no_reload'])}** no-reload<br>"
                f"{n(v['socket_errors'])} socket errors + {n(v['non_2xx'])} non-2xx; p99 {ms(v['p99_ms'])} "
                f"({ms(v['no_reload']['p99_ms'])} without HUPs)")
        if client:
            cell += f"; client: {n(client.get('errors'))} failed of {n(client.get('requests'))}"
        if not v.get("master_alive_at_end", True):
            cell += "; **master died**"
        row.cells[cls] = cell
    if "hardened" in pc:
        peers = [c for c in pc if c != "hardened"]
        h = pc["hardened"]
        worst = []
        if peers and errors["hardened"] > min(errors[c] for c in peers):
            worst.append(f"{n(errors['hardened'])} failed requests against {n(min(errors[c] for c in peers))}")
        best_p99 = min(pc[c]["p99_ratio_reload_vs_no_reload"] for c in peers) if peers else None
        if best_p99 is not None and h["p99_ratio_reload_vs_no_reload"] > best_p99 * (1 + P99_NOISE):
            worst.append(f"p99 {x(h['p99_ratio_reload_vs_no_reload'])} its no-reload p99 against {x(best_p99)}")
        row.verdict = YES if not worst else NO
        if worst:
            row.notes.append(f"**HUP reloads**: hardened_worker is behind a peer: {'; '.join(worst)}.")
    return row


def bad_deploy_row(data: Optional[dict]) -> Row:
    row = Row("Bad deploy", "")
    if _missing(row, data):
        return row
    cfg = data["config"]
    row.setup = (f"under wrk ({cfg['connections']} connections), HUP to a config whose app fails lifespan "
                 f"startup; then, if the master lives, a good HUP")
    pc = data["per_class"]
    for cls in CLASSES:
        if cls not in pc:
            continue
        v = pc[cls]
        if v["master_alive_after_bad_hup"]:
            cell = (f"master **survives**, **{n(v['errors_during_bad'])}** errors<br>"
                    f"{v['initial_workers_alive_after_bad']}/{v['workers_after_bad']} original workers keep serving")
            if v.get("good_hup_succeeded") is not None:
                cell += (f"; good HUP after: {'new generation serves' if v['good_hup_succeeded'] else '**failed**'}"
                         f", {n(v['errors_during_good'])} errors")
        else:
            died = v["bad_phase"].get("master_died_at_s")
            hup = (v["bad_phase"].get("hup_sent_at_s") or [None])[0]
            after = f" {died - hup:.1f} s after the HUP" if died is not None and hup is not None else ""
            cell = (f"master **exits** (status {v['master_exit_status']}){after}, "
                    f"**{n(v['errors_during_bad'])}** errors<br>total outage: nothing listens any more")
        row.cells[cls] = cell
    if "hardened" in pc:
        h = pc["hardened"]
        peers = [c for c in pc if c != "hardened"]
        ok = h["master_alive_after_bad_hup"] and (not peers or h["errors_during_bad"] <= min(
            pc[c]["errors_during_bad"] for c in peers)) and h.get("good_hup_succeeded") is not False
        row.verdict = YES if ok else NO
        if not ok:
            row.notes.append(
                f"**Bad deploy**: hardened_worker did not hold up: master alive "
                f"{h['master_alive_after_bad_hup']}, {h['errors_during_bad']} errors, good HUP after "
                f"{h.get('good_hup_succeeded')}.")
    return row


def drain_row(data: Optional[dict]) -> Row:
    row = Row("Drain (SIGTERM)", "")
    if _missing(row, data):
        return row
    cfg = data["config"]
    row.setup = (f"SIGTERM to the master {cfg['term_after_s']:g} s after sending {cfg['requests']} × "
                 f"`/sleep?s={cfg['sleep_s']:g}`; `--graceful-timeout {cfg['graceful_timeout_s']}`")
    pc = data["per_class"]
    base = pc.get("uvicorn", {}).get("term_to_master_exit_s")
    for cls in CLASSES:
        if cls not in pc:
            continue
        v = pc[cls]
        exit_s = v["term_to_master_exit_s"]
        cell = (f"**{v['completed_200']}/{v['in_flight']}** answered 200, time to exit **{x(ratio(exit_s, base))}**<br>"
                f"master exit {v['master_exit_status']} after {secs(exit_s)}")
        last = v.get("term_to_last_answer_s")
        if last is not None and exit_s is not None:
            cell += f" (last answer at {secs(last)}, +{secs(exit_s - last)})"
        cell += f"; lifespan shutdown {v['lifespan_shutdowns']}"
        row.cells[cls] = cell
    if "hardened" in pc:
        h = pc["hardened"]
        peers = [c for c in pc if c != "hardened"]
        complete = h["completed_200"] >= max([pc[c]["completed_200"] for c in peers] or [0]) \
            and h["master_exit_status"] == 0
        times = [pc[c]["term_to_master_exit_s"] for c in peers if pc[c]["term_to_master_exit_s"] is not None]
        best = min(times) if times else None
        slower = h["term_to_master_exit_s"] is None or (best is not None and h["term_to_master_exit_s"] > best)
        if not complete:
            row.verdict = NO
            row.notes.append(f"**Drain**: hardened_worker answered {h['completed_200']}/{h['in_flight']} "
                             f"(exit status {h['master_exit_status']}).")
        elif not slower:
            row.verdict = YES
        else:
            tail = {c: pc[c].get("last_answer_to_master_exit_s") for c in pc}
            extra = h["term_to_master_exit_s"] - best
            row.verdict = NOISE if extra <= TIME_NOISE_S else NO
            tails = ", ".join(f"{PLOT_LABELS[c]} {secs(t)}" for c, t in tail.items() if t is not None)
            note = (f"**Drain**: every request was answered, but hardened_worker's master exited "
                    f"{extra:.2f} s later than the fastest peer's ({secs(h['term_to_master_exit_s'])} against "
                    f"{secs(best)}).")
            if tails and h.get("term_to_last_answer_s") is not None:
                note += (f" The requests themselves end {secs(h['term_to_last_answer_s'])} after the TERM; "
                         f"from the last answer to the master's exit took {tails}: lifespan shutdown, the "
                         f"worker process's exit, and the master noticing it (gunicorn's stop loop polls "
                         f"every 100 ms).")
            note += (" A difference this small is within run-to-run noise." if extra <= TIME_NOISE_S
                     else " It is a real, if small, cost.")
            row.notes.append(note)
    return row


def recycle_row(data: Optional[dict]) -> Row:
    row = Row("Recycling one worker", "")
    if _missing(row, data):
        return row
    cfg = data["config"]
    row.setup = (f"`-w 1`, app startup {cfg['startup_s']:g} s, a fresh connection every "
                 f"{cfg['probe_period_ms']} ms for {cfg['seconds']:g} s per cause")
    pc = data["per_class"]
    for cls in CLASSES:
        if cls not in pc:
            continue
        parts = []
        for cause, v in pc[cls].items():
            if not v.get("supported", True):
                parts.append(f"{cause}: not available")
            else:
                parts.append(f"{cause}: **{ms(v['longest_wait_ms'])}** longest wait (p99 "
                             f"{ms(v['p99_ms'])}), {v['failed']} failed")
        row.cells[cls] = "<br>".join(parts)
    hardened = pc.get("hardened", {})
    if hardened:
        worst = max(v["longest_wait_ms"] for v in hardened.values())
        failed = sum(v["failed"] for v in hardened.values())
        row.verdict = YES if failed == 0 and worst <= 500 else NO
        if row.verdict is NO:
            row.notes.append(f"**Recycling one worker**: hardened_worker's longest wait {ms(worst)}, "
                             f"{failed} failed probes.")
    return row


def _leak_cell(v: dict, base: Optional[dict], label: str = "") -> str:
    peak = v["peak_worker_rss_mib"]
    errors = v["socket_errors"] + v["non_2xx"]
    base_peak = base["peak_worker_rss_mib"] if base else None
    if v is base:
        shown = "1×"
    elif base and base["capped"]:
        # The reference stopped at the cap: its true peak is higher, so a ratio to it is an upper
        # bound, and two capped runs cannot be compared at all.
        shown = "capped" if v["capped"] else f"≤ {x(ratio(peak, base_peak))}"
    else:
        shown = x(ratio(peak, base_peak))
    cell = f"{label}peak RSS **{shown}**, **{n(errors)}** errors<br>"
    if v["capped"]:
        cell += f"≥ {mib(peak)}: stopped at the cap after {v['ran_s']:.1f} s"
    else:
        cell += f"{mib(peak)} peak worker RSS"
    cell += f"; {n(v['workers_replaced'])} workers replaced; {n(v['requests'])} requests"
    return cell


def leak_rows(data: Optional[dict]) -> list[Row]:
    plain = Row("Memory leak", "")
    capped = Row("Memory leak, peers with `--max-requests`", "")
    if _missing(plain, data):
        _missing(capped, data)
        return [plain, capped]
    cfg = data["config"]
    pv = data["per_variant"]
    h = pv.get("hardened-memory-limit")
    limit = (h or {}).get("env", {}).get("HARDENED_MEMORY_LIMIT")
    plain.setup = (f"`/leak?kib={cfg['kib_per_request']}` under wrk ({cfg['connections']} connections) for "
                   f"{cfg['duration_s']} s; hardened with `HARDENED_MEMORY_LIMIT={limit}`, the peers without "
                   f"any limit (stopped once a worker passes {cfg['cap_mib']:,} MiB); ratios to UvicornWorker")
    mr = pv.get("uvicorn-max-requests") or pv.get("asgi-max-requests")
    capped.setup = (f"the same leak; the peers with `{' '.join(mr['args'])}`" if mr else "the same leak") + \
        "; ratios to UvicornWorker with `--max-requests`"
    base = pv.get("uvicorn")
    base_mr = pv.get("uvicorn-max-requests")
    if h:
        plain.cells["hardened"] = _leak_cell(h, base)
        capped.cells["hardened"] = _leak_cell(h, base_mr) + "<br>(the run above)"
    for cls in ("uvicorn", "asgi"):
        plain.cells[cls] = _leak_cell(pv[cls], base) if cls in pv else "not run"
        key = f"{cls}-max-requests"
        capped.cells[cls] = _leak_cell(pv[key], base_mr) if key in pv else "not run"
    if not h:
        return [plain, capped]
    limit_note = (f"(Peak is RSS sampled every {cfg['sample_interval_s']:g} s; hardened_worker's limit "
                  f"counts USS, the private pages, so RSS runs some tens of MiB above it: the pages the "
                  f"worker shares with the master.)")
    for row, keys in ((plain, ("uvicorn", "asgi")), (capped, ("uvicorn-max-requests", "asgi-max-requests"))):
        peers = [pv[k] for k in keys if k in pv]
        if not peers:
            continue
        h_err = h["socket_errors"] + h["non_2xx"]
        min_err = min(p["socket_errors"] + p["non_2xx"] for p in peers)
        min_peak = min(p["peak_worker_rss_mib"] for p in peers)
        problems = []
        if h_err > min_err:
            problems.append(f"{n(h_err)} failed requests against {n(min_err)}")
        if h["peak_worker_rss_mib"] > min_peak:
            problems.append(f"a peak worker RSS of {mib(h['peak_worker_rss_mib'])} against {mib(min_peak)} "
                            f"({x(ratio(h['peak_worker_rss_mib'], min_peak))})")
        if not problems:
            row.verdict = YES
            continue
        row.verdict = NO
        why = ""
        if row is capped and h_err <= min_err:
            counts = {k: pv[k]["args"] for k in keys if k in pv}
            args = next(iter(counts.values()))
            per_life = None
            m = re.search(r"--max-requests (\d+)", " ".join(args))
            if m:
                per_life = int(m.group(1)) * cfg["kib_per_request"] / 1024
            errs = ", ".join(f"{k}: {n(pv[k]['socket_errors'] + pv[k]['non_2xx'])}" for k in keys if k in pv)
            why = (f" `--max-requests` was given a count that suits this very leak "
                   f"({f'{per_life:.0f} MiB' if per_life else 'a few tens of MiB'} per worker life), so it "
                   f"recycles below hardened_worker's configured ceiling; it is blind to memory (the same "
                   f"count recycles a healthy worker, or lets a faster leak through) and each recycle cost "
                   f"failed requests ({errs}), where hardened_worker had {n(h_err)}. A lower "
                   f"`HARDENED_MEMORY_LIMIT` lowers its peak accordingly. {limit_note}")
        row.notes.append(f"**{row.title}**: hardened_worker is behind on {'; '.join(problems)}.{why}")
    return [plain, capped]


def hung_row(data: Optional[dict]) -> Row:
    row = Row("Hung request", "")
    if _missing(row, data):
        return row
    cfg = data["config"]
    row.setup = (f"`--timeout {cfg['timeout_s']}`, one `/block?s={cfg['block_s']:g}` (`time.sleep` "
                 f"in the app blocks the event loop)")
    pc = data["per_class"]
    base = pc.get("uvicorn", {}).get("replaced_after_s")
    for cls in CLASSES:
        if cls not in pc:
            continue
        v = pc[cls]
        if v["replaced"]:
            cell = f"replaced after **{secs(v['replaced_after_s'])}** ({x(ratio(v['replaced_after_s'], base))})"
        else:
            cell = f"**not replaced** within {cfg['within_s']:g} s"
        cell += f", stack naming the blocking line: {yesno(v['stack_names_testapp'])}<br>"
        extra = []
        if v["stack_logged_at_timeout"]:
            extra.append("every thread's stack at the timeout")
        if v.get("stall_warning_logged"):
            extra.append("stall warning before it")
        if v["worker_timeout_logged"]:
            extra.append("`WORKER TIMEOUT` logged")
        extra.append("serving after" if v["serving_after"] else "**not serving after**")
        cell += "; ".join(extra)
        row.cells[cls] = cell
    if "hardened" in pc:
        h = pc["hardened"]
        peers = [c for c in pc if c != "hardened"]
        times = [pc[c]["replaced_after_s"] for c in peers if pc[c]["replaced"]]
        ok = h["replaced"] and h["stack_names_testapp"] and h["serving_after"]
        slower = ok and times and h["replaced_after_s"] > min(times)
        if not ok:
            row.verdict = NO
            row.notes.append(f"**Hung request**: hardened_worker replaced {h['replaced']}, stack logged "
                             f"{h['stack_names_testapp']}, serving after {h['serving_after']}.")
        elif slower and h["replaced_after_s"] - min(times) > 1.0:
            row.verdict = NO
            row.notes.append(f"**Hung request**: hardened_worker's worker was replaced "
                             f"{h['replaced_after_s'] - min(times):.1f} s later than the fastest peer's.")
        elif slower:
            row.verdict = NOISE
            row.notes.append(
                f"**Hung request**: the stack is there, but the replacement came "
                f"{h['replaced_after_s'] - min(times):.2f} s after the fastest peer's "
                f"({secs(h['replaced_after_s'])} against {secs(min(times))}). gunicorn's master looks for "
                f"timed-out workers about once a second, so when a hung worker is caught varies by up to "
                f"a second from run to run, whatever the worker class; in that time hardened_worker also "
                f"writes every thread's stack.")
        else:
            row.verdict = YES
    return row


def nginx_row(data: Optional[dict]) -> Row:
    row = Row("Reloads behind nginx", "")
    if _missing(row, data):
        return row
    cfg = data["config"]
    row.setup = (f"nginx (upstream keep-alive 32) in front; HUP every {cfg['hup_interval_s']:g} s for "
                 f"{cfg['duration_s']} s under wrk ({cfg['connections']} connections), GET and POST alternating")
    pc = data["per_class"]
    ratios = data.get("ratios", {})
    for cls in CLASSES:
        if cls not in pc:
            continue
        v = pc[cls]
        resets = v["upstream_prematurely_closed"] + v["reset_by_peer"]
        r = ratios.get(cls, {}) if cls != "uvicorn" else {"rps_ratio": 1.0, "p99_ms_ratio": 1.0}
        cell = (f"**{n(v['non_2xx'])}** 502s, **{n(resets)}** upstream resets<br>"
                f"{x(r.get('rps_ratio'))} req/s ({n(v['rps'])}), {x(r.get('p99_ms_ratio'))} p99 ({ms(v['p99_ms'])}); "
                f"nginx: {v['upstream_prematurely_closed']} \"prematurely closed\", {v['reset_by_peer']} "
                f"\"reset by peer\"")
        client = v.get("timeline")
        if client:
            cell += f"; client: {n(client.get('errors'))} failed of {n(client.get('requests'))}"
        row.cells[cls] = cell
    if "hardened" in pc:
        h = pc["hardened"]
        peers = [c for c in pc if c != "hardened"]

        def bad(v: dict) -> tuple[int, int]:
            return v["non_2xx"] + v["socket_errors"] + (v.get("client_errors") or 0), \
                v["upstream_prematurely_closed"] + v["reset_by_peer"]
        hb = bad(h)
        best = (min(bad(pc[c])[0] for c in peers), min(bad(pc[c])[1] for c in peers)) if peers else (0, 0)
        if hb[0] <= best[0] and hb[1] <= best[1]:
            row.verdict = YES
            r = ratios.get("hardened", {})
            rps_r, p99_r = r.get("rps_ratio"), r.get("p99_ms_ratio")
            if (rps_r is not None and rps_r < 1 - RPS_NOISE) or (p99_r is not None and p99_r > 1 + P99_NOISE):
                row.notes.append(
                    f"**Reloads behind nginx**: no request lost, but hardened_worker's throughput and latency "
                    f"on this row were {x(rps_r)} UvicornWorker's requests/s and {x(p99_r)} its p99. These "
                    f"figures are not an overhead measure: the three classes run one after another, not "
                    f"interleaved, so the machine's drift lands on them unevenly, and they include the "
                    f"reloads themselves. The overhead rows above measure throughput.")
        else:
            row.verdict = NO
            row.notes.append(f"**Reloads behind nginx**: hardened_worker had {hb[0]} failed requests and "
                             f"{hb[1]} upstream resets (best peer: {best[0]} and {best[1]}).")
    return row


# --- plots --------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _size_mib(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        return None
    unit = (m.group(2) or "M").upper()[0]
    return float(m.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024}[unit]


LEAK_STYLES = {
    "hardened-memory-limit": ("#1b9e77", "-", "hardened_worker.Worker, HARDENED_MEMORY_LIMIT={limit}"),
    "uvicorn": ("#3a6fb0", "-", "uvicorn_worker.UvicornWorker"),
    "uvicorn-max-requests": ("#3a6fb0", "--", "uvicorn_worker.UvicornWorker {args}"),
    "asgi": ("#d95f02", "-", "gunicorn -k asgi"),
    "asgi-max-requests": ("#d95f02", "--", "gunicorn -k asgi {args}"),
}


def plot_leak(data: dict, path: Path) -> None:
    plt = _pyplot()
    pv = data["per_variant"]
    cfg = data["config"]
    h = pv.get("hardened-memory-limit", {})
    limit_text = h.get("env", {}).get("HARDENED_MEMORY_LIMIT")
    soft = _size_mib(limit_text)
    fig, (top, zoom) = plt.subplots(2, 1, figsize=(10, 8), sharex=True,
                                    gridspec_kw={"height_ratios": [1, 1.2]})
    recycled_peak = 0.0
    for name, v in pv.items():
        color, style, label = LEAK_STYLES.get(name, ("grey", ":", name))
        label = label.format(limit=limit_text, args=" ".join(v.get("args", [])))
        points = v["rss_series"]["points"]
        ts = [p[0] for p in points]
        peak = [p[1] for p in points]
        err = v["socket_errors"] + v["non_2xx"]
        label += f" ({err:,} errors)"
        for ax in (top, zoom):
            ax.plot(ts, peak, style, color=color, lw=1.4 if name.startswith("hardened") else 1.1, label=label)
        if name in ("hardened-memory-limit", "uvicorn-max-requests"):
            recycled_peak = max(recycled_peak, v["peak_worker_rss_mib"])
        if v["capped"]:
            top.plot([ts[-1]], [peak[-1]], "x", color=color, ms=8)
    top.axhline(cfg["cap_mib"], color="grey", lw=0.8, ls=":")
    top.text(0.2, cfg["cap_mib"], f"bench cap {cfg['cap_mib']:,} MiB: a run stops here (×)", va="bottom",
             fontsize=8, color="grey")
    top.set_ylabel("largest worker's RSS (MiB)")
    top.set_title(f"Leak of {cfg['kib_per_request']} KiB per request under wrk ({cfg['connections']} connections), "
                  f"{cfg['workers']} workers", fontsize=11)
    handles, labels = top.get_legend_handles_labels()
    if soft:
        hard = soft * 1.25
        for ax in (top, zoom):
            ax.axhline(soft, color="#1b9e77", lw=0.8, ls="--")
        zoom.axhline(hard, color="#1b9e77", lw=0.8, ls=":")
        box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1}
        zoom.text(0.995, soft, f"HARDENED_MEMORY_LIMIT {limit_text} (soft, USS) ", va="center", ha="right",
                  fontsize=8, color="#1b9e77", transform=zoom.get_yaxis_transform(), bbox=box)
        zoom.text(0.995, hard, f"hard limit {hard:.0f} MiB (soft + 25%, USS) ", va="center", ha="right",
                  fontsize=8, color="#1b9e77", transform=zoom.get_yaxis_transform(), bbox=box)
    zoom.set_ylim(0, max(recycled_peak, (soft or 0) * 1.25) * 1.3 or 300)
    zoom.set_ylabel("MiB (zoom on the limit)")
    zoom.set_xlabel(f"seconds of load (RSS of every worker sampled every {cfg['sample_interval_s']:g} s; "
                    f"the line is the largest)")
    for ax in (top, zoom):
        ax.grid(alpha=0.3)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timeline(data: dict, path: Path, title: str, startup_s: float = 0.0) -> None:
    plt = _pyplot()
    pc = {c: v for c, v in data["per_class"].items() if v.get("timeline")}
    if not pc:
        raise ValueError("no timeline in the results (run the scenario again)")
    fig, axes = plt.subplots(len(pc), 1, figsize=(10, 2.6 * len(pc) + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    ymax = 0.0
    twins = []
    for ax, (cls, v) in zip(axes[:, 0], pc.items()):
        series = v["timeline"]["series"]
        width = series["bucket_s"]
        pts = series["points"]
        ts = [p[0] for p in pts]
        ok = [p[1] / width for p in pts]
        errs = [p[2] for p in pts]
        ymax = max(ymax, max(ok, default=0))
        ax.step(ts + [ts[-1] + width], ok + [ok[-1]], where="post", color=COLORS.get(cls, "black"), lw=1.4)
        ax.fill_between(ts + [ts[-1] + width], ok + [ok[-1]], step="post", color=COLORS.get(cls, "black"),
                        alpha=0.2)
        for i, t in enumerate(v.get("hups_sent_at_s", [])):
            ax.axvline(t, color="black", lw=0.9, ls="--")
            if startup_s:
                ax.axvspan(t, t + startup_s, color="grey", alpha=0.12, lw=0)
            ax.text(t, 1.0, " HUP", transform=ax.get_xaxis_transform(), fontsize=8, va="top")
        twin = ax.twinx()
        twins.append(twin)
        twin.bar([t + width / 2 for t in ts], errs, width=width * 0.8, color="#d62728", alpha=0.75)
        twin.set_ylabel("failed / bucket", color="#d62728", fontsize=8)
        twin.tick_params(axis="y", colors="#d62728", labelsize=8)
        wrk_errors = v["socket_errors"] + v["non_2xx"]
        ax.set_title(f"{PLOT_LABELS.get(cls, cls)}: client {v['timeline']['errors']:,} failed of "
                     f"{v['timeline']['requests']:,}; wrk {wrk_errors:,} errors, p99 {ms(v['p99_ms'])}",
                     fontsize=10, loc="left")
        ax.set_ylabel("answered/s", fontsize=9)
        ax.grid(alpha=0.3)
    emax = max(max((p[2] for p in v["timeline"]["series"]["points"]), default=0) for v in pc.values())
    for twin in twins:
        twin.set_ylim(0, max(5, emax * 1.15))
    axes[0, 0].set_ylim(0, ymax * 1.15 or 1)
    conn = next(iter(pc.values()))["timeline"]["concurrency"]
    shade = f"; grey: the new workers' {startup_s:g} s of app startup" if startup_s else ""
    axes[-1, 0].set_xlabel(f"seconds since the load started (dashed: HUP sent to the master{shade})\n"
                           f"line: requests answered per second by a {conn}-connection Python client beside wrk, "
                           f"in {width:g} s buckets; red bars: its failed requests per bucket", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_plots(found: dict, out: Path) -> tuple[dict[str, str], list[str]]:
    """``({png name: caption}, [problems])``; a plot that cannot be drawn is skipped with a reason."""
    made: dict[str, str] = {}
    problems: list[str] = []
    try:
        _pyplot()
    except ImportError:
        return made, ["matplotlib is not installed (`pip install -e '.[bench]'`): no plots"]
    jobs: list[tuple[str, str, Callable[[], None]]] = []
    leak = found.get("leak")
    if leak and "error" not in leak:
        jobs.append(("leak_rss.png", "Largest worker's RSS over time with the leaking app",
                     lambda: plot_leak(leak, out / "leak_rss.png")))
    hup = found.get("hup")
    if hup and "error" not in hup:
        cfg = hup["config"]
        jobs.append(("hup_timeline.png", "Requests answered and failed over time across HUP reloads",
                     lambda cfg=cfg: plot_timeline(
                         hup, out / "hup_timeline.png",
                         f"HUP every {cfg['hup_interval_s']:g} s under wrk ({cfg['connections']} connections), "
                         f"app startup {cfg['startup_delay_s']:g} s, {cfg['workers']} workers",
                         cfg["startup_delay_s"])))
    nginx = found.get("nginx")
    if nginx and "error" not in nginx:
        cfg = nginx["config"]
        jobs.append(("nginx_timeline.png", "The same through nginx (upstream keep-alive), GET and POST alternating",
                     lambda cfg=cfg: plot_timeline(
                         nginx, out / "nginx_timeline.png",
                         f"Behind nginx (upstream keep-alive 32): HUP every {cfg['hup_interval_s']:g} s under "
                         f"wrk ({cfg['connections']} connections), {cfg['workers']} workers")))
    for name, caption, job in jobs:
        try:
            job()
            made[name] = caption
        except Exception as exc:  # an old result file without the series, say
            problems.append(f"{name} not drawn: {type(exc).__name__}: {exc}")
    return made, problems


# --- the document -------------------------------------------------------------------------------


def _when(text: Optional[str]) -> str:
    if not text:
        return "unknown date"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _header(found: dict) -> list[str]:
    runs = {name: d for name, d in found.items() if name != "all" and "machine" in d}
    anchor = found.get("all") if "machine" in found.get("all", {}) else None
    if anchor is None and runs:
        anchor = max(runs.values(), key=lambda d: d["machine"].get("date", ""))
    if anchor is None:
        return ["No results yet: run `make bench`.", ""]
    m = anchor["machine"]
    p = m.get("packages", {})
    repo = m.get("repo", {})
    commit = (repo.get("commit") or "unknown")[:12]
    package = repo.get("modified_package_files")
    if package is None:  # results from before the field existed
        dirty = " with uncommitted changes" if repo.get("modified_tracked_files") else ""
    elif package:
        dirty = f" with uncommitted changes to {', '.join(f'`{p}`' for p in package[:6])}"
    else:
        dirty = ", no uncommitted changes to the package"
    command = anchor.get("command", "python -m bench all")
    if command.strip() == "python -m bench all":
        how = "`make bench` (which runs `.venv/bin/python -m bench all`), from the repository root"
    else:
        how = f"`.venv/bin/{command}`, from the repository root"
    lines = [
        f"- **Date**: {_when(m.get('date'))}"
        + (f" (run started {_when(anchor.get('run_id'))}, took {anchor['duration_s'] / 60:.1f} min)"
           if anchor.get("scenario") == "all" and anchor.get("duration_s") else ""),
        f"- **Command**: {how}",
        f"- **Machine**: {m.get('platform')}, {m.get('cpus_usable')} usable CPUs of {m.get('cpu_count')}, "
        f"{m.get('memory_total_gib')} GiB RAM; load average {', '.join(f'{v:.1f}' for v in m.get('load_average', []))} "
        f"at the end. Shared with other work: absolute figures drift a lot within minutes; ratios "
        f"between neighbouring runs much less",
        f"- **Software**: Python {m.get('python')}, gunicorn {p.get('gunicorn')}, uvicorn {p.get('uvicorn')}, "
        f"uvicorn-worker {p.get('uvicorn-worker')}, uvloop {p.get('uvloop')}, httptools {p.get('httptools')}, "
        f"hardened-worker {p.get('hardened-worker')} (commit `{commit}`{dirty}); "
        f"{re.sub(r' Copyright.*', '', m.get('wrk') or 'wrk unknown')}; "
        f"{(m.get('nginx') or 'nginx unknown').replace('nginx version: ', '')}",
    ]
    stray = [f"`{name}.json` ({_when(d['machine'].get('date'))}, `{d.get('command', '?')}`)"
             for name, d in runs.items() if anchor.get("run_id") and d.get("run_id") != anchor.get("run_id")]
    if stray:
        lines.append(f"- **Not from that run**: {', '.join(stray)}")
    return lines + [""]


def render(found: dict, plots: dict[str, str], problems: list[str], image_dir: str, readme: str) -> str:
    rows = [
        overhead_row(found.get("overhead"), forwarded=False),
        overhead_row(found.get("overhead-forwarded"), forwarded=True),
        hup_row(found.get("hup")),
        bad_deploy_row(found.get("bad_deploy")),
        drain_row(found.get("drain")),
        *leak_rows(found.get("leak")),
        hung_row(found.get("hung")),
        nginx_row(found.get("nginx")),
        recycle_row(found.get("recycle")),
    ]
    out = [
        "# Benchmark: hardened_worker against UvicornWorker and gunicorn's asgi worker",
        "",
        "`hardened_worker.Worker`, `uvicorn_worker.UvicornWorker` and gunicorn's own `-k asgi`, on the "
        "same app (`tests/apps/testapp.py`) on the same machine in one run; each gunicorn master in its "
        f"own process group, killed by pid at the end. Method and every knob: [bench/README.md]({readme}).",
        "",
        *_header(found),
        "Each cell: **ratios first** (to UvicornWorker, or to the same master without reloads), "
        "absolute figures second. \"Errors\" are failed requests: wrk's socket errors (connect, read, "
        "write, timeout) plus non-2xx answers. The last column: is hardened_worker at least as good as "
        "both peers on that row? Every row that is not a plain yes is explained below the table.",
        "",
        "| scenario | " + " | ".join(LABELS[c] for c in CLASSES) + " | hardened ≥ both? |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        out.append(f"| **{row.title}**<br><sub>{row.setup}</sub> | "
                   + " | ".join(row.cells[c] for c in CLASSES) + f" | {row.verdict} |")
    out.append("")
    notes = [note for row in rows for note in row.notes]
    if notes:
        out += ["## Where hardened_worker is not ahead", ""]
        out += [f"- {note}" for note in notes]
        out.append("")
    else:
        out += ["hardened_worker is at least as good as both peers on every row of this run.", ""]
    if plots or problems:
        out += ["## Plots", ""]
        for name, caption in plots.items():
            out += [f"### {caption}", "", f"![{caption}]({image_dir}{name})", ""]
        for problem in problems:
            out += [f"- {problem}", ""]
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
    if not any(name in found for name in FILES):
        raise SystemExit(f"no results in {results}: run `python -m bench all` first")
    results.mkdir(exist_ok=True)
    plots, problems = make_plots(found, results)
    for problem in problems:
        common.log(f"report: {problem}")
    local = results / "report.md"
    local.write_text(render(found, plots, problems, image_dir="", readme="../README.md"))
    written = [str(local.relative_to(common.ROOT))]
    common.log(f"report: wrote {written[0]} and {len(plots)} plots")
    if publish:
        PUBLISHED_PLOTS.mkdir(exist_ok=True)
        for name in PLOTS:
            stale = PUBLISHED_PLOTS / name
            if name in plots:
                shutil.copyfile(results / name, stale)
            elif stale.exists():
                stale.unlink()  # a plot this report could not draw must not look current
        PUBLISHED.write_text(render(found, plots, problems, image_dir="report/", readme="README.md"))
        # The same, one heading level down and with paths from the repository root, ready to paste
        # into the top-level README.
        section = render(found, plots, problems, image_dir="bench/report/", readme="bench/README.md")
        section = re.sub(r"^(#+) ", r"#\1 ", section, flags=re.MULTILINE)
        section = section.replace("[bench/README.md](bench/README.md)", "[bench/README.md](bench/README.md) "
                                  "(full report: [bench/REPORT.md](bench/REPORT.md))", 1)
        SECTION.write_text(section)
        if _embed_in_readme(section):
            written.append("README.md")
        written += [str(PUBLISHED.relative_to(common.ROOT)), str(SECTION.relative_to(common.ROOT)),
                    *(str((PUBLISHED_PLOTS / name).relative_to(common.ROOT)) for name in plots)]
        common.log(f"report: published {PUBLISHED.relative_to(common.ROOT)} and bench/report/*.png")
    return {"scenario": NAME, "written": written, "plots": sorted(plots), "problems": problems}


README = common.ROOT / "README.md"
README_START = "<!-- bench:start (bench/report/README-section.md, written by `make bench`) -->"
README_END = "<!-- bench:end -->"


def _embed_in_readme(section: str) -> bool:
    """Replace the README's benchmark section (between its markers) with the latest one."""
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    README.write_text(text[:start] + README_START + "\n" + section.rstrip() + "\n" + text[end:])
    return True
