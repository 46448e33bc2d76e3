"""Per-request overhead: the same app under the same wrk load, worker classes alternating round by
round, the order reversed every other round (AB BA AB ...) so neither class always runs first on a
machine whose load drifts. Ratios are taken per round against UvicornWorker (the neighbouring run)
and the median over rounds is reported, with the quartiles of the per-round ratios as the noise
band: a ratio whose band straddles 1.00 is graded "within noise", never a win."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import tempfile
from pathlib import Path

from bench import common
from bench.common import Metric, log, rig

NAME = "overhead"
HELP = "throughput and p99 of the three workers, alternating rounds"
TITLE = "Overhead"
SETUP = (
    "`GET {path}`, {workers} workers, wrk {connections} connections; median of {rounds} paired rounds "
    "× {duration_s} s, classes alternating"
)
# Each figure is the median of per-round ratios to UvicornWorker; its noise band is the quartiles of
# those ratios (``<key>_band`` in the headline), the declared noise only stands in without one.
METRICS = (
    Metric("rps_ratio", "req/s", "ratio", "higher", noise=0.03),
    Metric("p99_ratio", "p99", "ratio", "lower", noise=0.10),
    Metric("cpu_per_request_ratio", "CPU/request", "ratio", "lower", noise=0.03),
    Metric("errors", "errors", "count", "lower"),
    # None (not applicable, not shown) unless every request carried forwarded headers.
    Metric("forwarded_applied", "forwarded headers applied", "count", "higher"),
)

XFF = "203.0.113.7, 10.0.0.1"
FORWARDED_LUA = f"""\
wrk.headers["X-Forwarded-For"] = "{XFF}"
wrk.headers["X-Forwarded-Proto"] = "https"
"""
CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rounds", type=int, default=5, help="rounds per worker class (default 5, min 3)"
    )
    p.add_argument(
        "--duration", type=int, default=6, help="whole seconds of wrk per round (default 6)"
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="whole seconds of warm-up per master (default 2)"
    )
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers per master")
    p.add_argument("--path", default="/")
    p.add_argument(
        "--forwarded",
        action="store_true",
        help=f"every request carries X-Forwarded-For: {XFF} and X-Forwarded-Proto: https",
    )
    p.add_argument(
        "--close",
        action="store_true",
        help="every request carries Connection: close (a new connection per request, as "
        "from a proxy or clients without keep-alive)",
    )
    p.add_argument(
        "--access-log",
        action="store_true",
        help="every master writes gunicorn's access log (--access-logfile, default format) "
        "to a file in the run's temp dir",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for every master (repeatable), e.g. HARDENED_HEALTH_PATH=/healthz",
    )
    p.add_argument("--variant", help="name of the variant (default: derived from the options)")


def parse_env(pairs: list[str]) -> dict:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def variant_of(args: argparse.Namespace, env: dict) -> str:
    if args.variant:
        return args.variant
    parts = (
        (["forwarded"] if args.forwarded else [])
        + (["close"] if args.close else [])
        + (["access-log"] if args.access_log else [])
        + [f"{k}={v}" for k, v in env.items()]
    )
    return "+".join(parts) or "plain"


def result_name(variant: str) -> str:
    if variant == "plain":
        return NAME
    slug = re.sub(r"[^a-z0-9.=]+", "-", variant.lower().replace("hardened_", "")).strip("-")
    return f"{NAME}-{slug}"


def quartiles(values: list) -> list:
    """[lower quartile, upper quartile] of the finite values (the noise band of a median)."""
    finite = sorted(v for v in values if v is not None and v == v)
    if len(finite) < 2:
        return [None, None]
    q = statistics.quantiles(finite, n=4, method="inclusive")
    return [q[0], q[2]]


def verdict(ratios: list, higher_is_better: bool) -> str:
    """ "better"/"worse" only when the whole noise band is on one side of 1.00."""
    low, high = quartiles(ratios)
    if low is None:
        return "not measured"
    if low > 1.0:
        return "better" if higher_is_better else "worse"
    if high < 1.0:
        return "worse" if higher_is_better else "better"
    return "within noise"


def _lines(path: Path) -> dict:
    if not path.exists():
        return {"lines": 0, "last": None}
    with path.open("rb") as f:
        count, last = 0, b""
        for line in f:
            count, last = count + 1, line
    return {"lines": count, "last": last.decode("utf-8", "replace").rstrip("\n")}


def headline(rounds: list, classes: list, app_saw: dict) -> dict:
    """Per class: the medians of its per-round ratios to UvicornWorker with their quartile bands
    (UvicornWorker itself is 1.00 by definition, no band), its errors over all rounds, and whether the
    app saw the forwarded client and scheme (None when the run sent no forwarded headers)."""
    out = {}
    for cls in classes:
        figures: dict = {"errors": sum(r[cls]["socket_errors"] + r[cls]["non_2xx"] for r in rounds)}
        for key in ("rps", "p99", "cpu_per_request"):
            if cls == common.BASELINE:
                figures[f"{key}_ratio"] = 1.0
            elif any("ratios_vs_uvicorn" in r for r in rounds):
                per_round = [r["ratios_vs_uvicorn"][cls][key] for r in rounds]
                figures[f"{key}_ratio"], figures[f"{key}_ratio_band"] = (
                    common.median(per_round),
                    quartiles(per_round),
                )
        saw = app_saw.get(cls)
        figures["forwarded_applied"] = (
            None
            if saw is None
            else (saw.get("client") or ["127.0.0.1"])[0] != "127.0.0.1"
            and saw.get("scheme") == "https"
        )
        out[cls] = figures
    return out


def run(args: argparse.Namespace) -> dict:
    if args.rounds < 3:
        raise SystemExit("--rounds must be at least 3")
    env = parse_env(args.env)
    variant = variant_of(args, env)
    classes = args.classes
    rounds: list[dict] = []
    app_saw: dict = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        lua = (FORWARDED_LUA if args.forwarded else "") + (CLOSE_LUA if args.close else "")
        script = common.lua_script(Path(tmp), "headers.lua", lua) if lua else None
        masters = {}
        for cls in classes:
            log(f"overhead[{variant}]: starting {cls}")
            access = (
                ["--access-logfile", str(Path(tmp) / f"access-{cls}.log")]
                if args.access_log
                else []
            )
            masters[cls] = stack.enter_context(
                common.master(cls, workers=args.workers, env=env, args=access)
            )
        if args.forwarded:
            # What the app sees of the client with these headers (same trusted set everywhere:
            # gunicorn's default --forwarded-allow-ips, 127.0.0.1).
            headers = {"X-Forwarded-For": XFF, "X-Forwarded-Proto": "https"}
            for cls, m in masters.items():
                status, body = rig.get(m.port, "/client", headers=headers)
                seen = json.loads(body) if status == 200 else {}
                client = seen.get("client") or [None]
                app_saw[cls] = {
                    "client": seen.get("client"),
                    "scheme": seen.get("scheme"),
                    "headers_applied": client[0] != "127.0.0.1" or seen.get("scheme") == "https",
                }
        for cls, m in masters.items():
            log(f"overhead[{variant}]: warm-up {cls} {args.warmup:g} s")
            rig.wrk(
                m.port,
                args.path,
                duration=args.warmup,
                connections=args.connections,
                threads=args.threads,
                script=script,
            )
        for index in range(1, args.rounds + 1):
            entry: dict = {"round": index}
            order = list(masters.items())
            for cls, m in order if index % 2 else order[::-1]:
                workers = m.workers()
                cpu_before = common.cpu_seconds(workers)
                result = rig.wrk(
                    m.port,
                    args.path,
                    duration=args.duration,
                    connections=args.connections,
                    threads=args.threads,
                    script=script,
                )
                summary = common.wrk_summary(result)
                del summary["socket_error_kinds"]
                # CPU the workers spent per request: steadier than requests/s on a shared machine,
                # where wrk and the neighbours take the cores unevenly.
                summary["cpu_us_per_request"] = common.rounded(
                    (common.cpu_seconds(workers) - cpu_before) / max(result.requests, 1) * 1e6, 2
                )
                entry[cls] = summary
                log(
                    f"overhead[{variant}]: round {index} {cls}: {result.rps:.0f} req/s, "
                    f"p99 {result.p99_ms:.1f} ms, errors {result.socket_errors}, non-2xx {result.non_2xx}"
                )
            if common.BASELINE in masters:
                base = entry[common.BASELINE]
                entry["ratios_vs_uvicorn"] = {
                    cls: {
                        "rps": common.ratio(entry[cls]["rps"], base["rps"]),
                        "p99": common.ratio(entry[cls]["p99_ms"], base["p99_ms"]),
                        "cpu_per_request": common.ratio(
                            entry[cls]["cpu_us_per_request"], base["cpu_us_per_request"]
                        ),
                    }
                    for cls in classes
                    if cls != common.BASELINE
                }
            rounds.append(entry)
        alive = {cls: common.master_alive(m) for cls, m in masters.items()}
        logs = {cls: common.log_digest(m.log()) for cls, m in masters.items()}
        # Proof that both classes wrote the log (and how many lines): a class that silently wrote
        # none would win the ratio for nothing.
        access_lines = (
            {cls: _lines(Path(tmp) / f"access-{cls}.log") for cls in classes}
            if args.access_log
            else {}
        )

    ratios = {}
    if common.BASELINE in classes:
        for cls in classes:
            if cls == common.BASELINE:
                continue
            per_round = {
                key: [r["ratios_vs_uvicorn"][cls][key] for r in rounds]
                for key in ("rps", "p99", "cpu_per_request")
            }
            ratios[f"{cls}/uvicorn"] = {
                "median_rps_ratio": common.median(per_round["rps"]),
                "median_p99_ratio": common.median(per_round["p99"]),
                "median_cpu_per_request_ratio": common.median(per_round["cpu_per_request"]),
                # Quartiles of the per-round ratios, and what they allow one to say.
                "rps_ratio_band": quartiles(per_round["rps"]),
                "cpu_per_request_ratio_band": quartiles(per_round["cpu_per_request"]),
                "rps_verdict": verdict(per_round["rps"], higher_is_better=True),
                "cpu_per_request_verdict": verdict(
                    per_round["cpu_per_request"], higher_is_better=False
                ),
            }
    medians = {
        cls: {
            "rps": common.median(r[cls]["rps"] for r in rounds),
            "p99_ms": common.median(r[cls]["p99_ms"] for r in rounds),
            "socket_errors": sum(r[cls]["socket_errors"] for r in rounds),
            "non_2xx": sum(r[cls]["non_2xx"] for r in rounds),
        }
        for cls in classes
    }
    result = {
        "scenario": NAME,
        "variant": variant,
        "headline": headline(rounds, classes, app_saw),
        "ratios": ratios,
        "ratio_method": "per round: class / UvicornWorker of the same round (order reversed every other "
        "round); median over rounds, quartiles as the noise band",
        "absolute_medians": medians,
        "rounds": rounds,
    }
    if app_saw:
        result["app_saw_with_forwarded_headers"] = app_saw
    if access_lines:
        result["access_log_lines"] = access_lines
    result.update(
        {
            "masters_alive_at_end": alive,
            "logs": logs,
            "config": {
                "workers": args.workers,
                "connections": args.connections,
                "wrk_threads": args.threads,
                "rounds": args.rounds,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "path": args.path,
                "forwarded_headers": args.forwarded,
                "connection_close": args.close,
                "access_log": args.access_log,
                "env": env,
                "order": "".join(c[0].upper() for c in classes) + ", reversed every other round",
                "classes": {c: common.WORKERS[c] for c in classes},
            },
            "result_file": result_name(variant),
        }
    )
    return result
