"""The report's PNG plots, drawn from the scenarios' detail (not their headline figures):
``leak_rss.png`` (largest worker's RSS over time), ``hup_timeline.png`` and ``nginx_timeline.png``
(requests answered and failed per time bucket across reloads). Needs matplotlib (the ``bench``
extra); :func:`make_plots` says so instead of failing when it is missing."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLOTS = ("leak_rss.png", "hup_timeline.png", "nginx_timeline.png")
PLOT_LABELS = {
    "hardened": "hardened_worker.Worker",
    "uvicorn": "uvicorn_worker.UvicornWorker",
    "asgi": "gunicorn -k asgi",
}
COLORS = {"hardened": "#1b9e77", "uvicorn": "#3a6fb0", "asgi": "#d95f02"}


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _size_mib(text: str | None) -> float | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        return None
    unit = (m.group(2) or "M").upper()[0]
    return float(m.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024}[unit]


LEAK_STYLES = {
    "hardened-memory-limit": (
        "#1b9e77",
        "-",
        "hardened_worker.Worker, HARDENED_MEMORY_LIMIT={limit}",
    ),
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
    fig, (top, zoom) = plt.subplots(
        2, 1, figsize=(10, 8), sharex=True, gridspec_kw={"height_ratios": [1, 1.2]}
    )
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
            ax.plot(
                ts,
                peak,
                style,
                color=color,
                lw=1.4 if name.startswith("hardened") else 1.1,
                label=label,
            )
        if name in ("hardened-memory-limit", "uvicorn-max-requests"):
            recycled_peak = max(recycled_peak, v["peak_worker_rss_mib"])
        if v["capped"]:
            top.plot([ts[-1]], [peak[-1]], "x", color=color, ms=8)
    top.axhline(cfg["cap_mib"], color="grey", lw=0.8, ls=":")
    top.text(
        0.2,
        cfg["cap_mib"],
        f"bench cap {cfg['cap_mib']:,} MiB: a run stops here (×)",
        va="bottom",
        fontsize=8,
        color="grey",
    )
    top.set_ylabel("largest worker's RSS (MiB)")
    top.set_title(
        f"Leak of {cfg['kib_per_request']} KiB per request under wrk ({cfg['connections']} connections), "
        f"{cfg['workers']} workers",
        fontsize=11,
    )
    handles, labels = top.get_legend_handles_labels()
    if soft:
        hard = soft * 1.25
        for ax in (top, zoom):
            ax.axhline(soft, color="#1b9e77", lw=0.8, ls="--")
        zoom.axhline(hard, color="#1b9e77", lw=0.8, ls=":")
        box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1}
        zoom.text(
            0.995,
            soft,
            f"HARDENED_MEMORY_LIMIT {limit_text} (soft, USS) ",
            va="center",
            ha="right",
            fontsize=8,
            color="#1b9e77",
            transform=zoom.get_yaxis_transform(),
            bbox=box,
        )
        zoom.text(
            0.995,
            hard,
            f"hard limit {hard:.0f} MiB (soft + 25%, USS) ",
            va="center",
            ha="right",
            fontsize=8,
            color="#1b9e77",
            transform=zoom.get_yaxis_transform(),
            bbox=box,
        )
    zoom.set_ylim(0, max(recycled_peak, (soft or 0) * 1.25) * 1.3 or 300)
    zoom.set_ylabel("MiB (zoom on the limit)")
    zoom.set_xlabel(
        f"seconds of load (RSS of every worker sampled every {cfg['sample_interval_s']:g} s; "
        f"the line is the largest)"
    )
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
    fig, axes = plt.subplots(
        len(pc), 1, figsize=(10, 2.6 * len(pc) + 0.6), sharex=True, sharey=True, squeeze=False
    )
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
        ax.step(
            ts + [ts[-1] + width],
            ok + [ok[-1]],
            where="post",
            color=COLORS.get(cls, "black"),
            lw=1.4,
        )
        ax.fill_between(
            ts + [ts[-1] + width],
            ok + [ok[-1]],
            step="post",
            color=COLORS.get(cls, "black"),
            alpha=0.2,
        )
        for t in v.get("hups_sent_at_s", []):
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
        ax.set_title(
            f"{PLOT_LABELS.get(cls, cls)}: client {v['timeline']['errors']:,} failed of "
            f"{v['timeline']['requests']:,}; wrk {wrk_errors:,} errors, p99 {ms(v['p99_ms'])}",
            fontsize=10,
            loc="left",
        )
        ax.set_ylabel("answered/s", fontsize=9)
        ax.grid(alpha=0.3)
    emax = max(
        max((p[2] for p in v["timeline"]["series"]["points"]), default=0) for v in pc.values()
    )
    for twin in twins:
        twin.set_ylim(0, max(5, emax * 1.15))
    axes[0, 0].set_ylim(0, ymax * 1.15 or 1)
    conn = next(iter(pc.values()))["timeline"]["concurrency"]
    shade = f"; grey: the new workers' {startup_s:g} s of app startup" if startup_s else ""
    axes[-1, 0].set_xlabel(
        f"seconds since the load started (dashed: HUP sent to the master{shade})\n"
        f"line: requests answered per second by a {conn}-connection Python client beside wrk, "
        f"in {width:g} s buckets; red bars: its failed requests per bucket",
        fontsize=8,
    )
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
        jobs.append(
            (
                "leak_rss.png",
                "Largest worker's RSS over time with the leaking app",
                lambda: plot_leak(leak, out / "leak_rss.png"),
            )
        )
    # (result, png, caption, title from its config, the grey startup span in seconds)
    timelines = (
        (
            "hup",
            "hup_timeline.png",
            "Requests answered and failed over time across HUP reloads",
            "HUP every {hup_interval_s:g} s under wrk ({connections} connections), app startup "
            "{startup_delay_s:g} s, {workers} workers",
            "startup_delay_s",
        ),
        (
            "nginx",
            "nginx_timeline.png",
            "The same through nginx (upstream keep-alive), GET and POST alternating",
            "Behind nginx (upstream keep-alive 32): HUP every {hup_interval_s:g} s under wrk ({connections} "
            "connections), {workers} workers",
            None,
        ),
    )
    for scenario, png, caption, title, startup in timelines:
        data = found.get(scenario)
        if data and "error" not in data:
            cfg = data["config"]
            jobs.append(
                (
                    png,
                    caption,
                    lambda data=data, png=png, cfg=cfg, title=title, startup=startup: plot_timeline(
                        data, out / png, title.format_map(cfg), cfg.get(startup, 0.0)
                    ),
                )
            )
    for name, caption, job in jobs:
        try:
            job()
            made[name] = caption
        except Exception as exc:  # an old result file without the series, say
            problems.append(f"{name} not drawn: {type(exc).__name__}: {exc}")
    return made, problems
