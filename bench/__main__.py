"""``python -m bench <scenario> [options]``: run one scenario (or ``all``), print one JSON object on
stdout, and write it with a machine description to ``bench/results/<name>.json``.
``python -m bench report`` turns ``bench/results/*.json`` into the Markdown report and its plots
(``all`` ends with it)."""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import sys
import time
import traceback

from bench import (
    bad_deploy,
    common,
    deadline,
    drain,
    hostile,
    hung,
    hup,
    leak,
    memcg,
    nginx,
    overhead,
    overload,
    profile,
    recycle,
    spread,
)

SCENARIOS = [
    overhead,
    hup,
    bad_deploy,
    drain,
    leak,
    memcg,
    hung,
    nginx,
    recycle,
    spread,
    deadline,
    overload,
    hostile,
]
TOOLS = [profile]  # run on their own, never by `all`
BY_NAME = {module.NAME: module for module in SCENARIOS + TOOLS}


def _classes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in common.WORKERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"classes are among {', '.join(common.WORKERS)}")
    # Keep the canonical order (hardened, uvicorn, asgi) whatever order was given.
    return [n for n in common.WORKERS if n in names]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--classes",
        type=_classes,
        default=list(common.WORKERS),
        help="worker classes to run, comma-separated (default: hardened,uvicorn,asgi)",
    )
    p.add_argument("--no-write", action="store_true", help="do not write bench/results/*.json")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = top.add_subparsers(dest="scenario", required=True, metavar="scenario")
    for module in SCENARIOS + TOOLS:
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
        _add_common(p)
    p = sub.add_parser(
        "all",
        help="every scenario with its defaults (overhead also with --forwarded, "
        "--access-log and metrics on), "
        "then the report",
    )
    p.add_argument("--skip", default="", help="scenarios to leave out, comma-separated")
    p.add_argument("--no-report", action="store_true", help="do not run the report at the end")
    _add_common(p)
    p = sub.add_parser(
        "report",
        help="Markdown table and PNG plots from bench/results/*.json",
        description="Reads bench/results/*.json; writes bench/results/report.md and its "
        "PNGs, and publishes them as bench/REPORT.md and bench/report/*.png.",
    )
    p.add_argument(
        "--no-publish",
        action="store_true",
        help="only bench/results/report.md and its PNGs, not bench/REPORT.md and bench/report/",
    )
    return top


# Every result written by one process (one `all` run) carries the same run id and command line.
RUN = {
    "run_id": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": "python -m bench " + " ".join(sys.argv[1:]),
}


def finish(result: dict, write: bool) -> dict:
    result["machine"] = common.machine()
    result.update(RUN)
    name = result.pop("result_file", result["scenario"])
    if write:
        result["written_to"] = str(common.write_result(name, {**result}).relative_to(common.ROOT))
        common.log(f"wrote {result['written_to']}")
    return result


def defaults(module: object, classes: list[str], **overrides: object) -> argparse.Namespace:
    """The module's own defaults, as ``python -m bench <name>`` with no options would parse them."""
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    args = p.parse_args([])
    args.classes = classes
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def run_all(args: argparse.Namespace) -> dict:
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}
    plan = [(module.NAME, module, {}) for module in SCENARIOS]
    plan[1:1] = [  # overhead's variants: each feature's cost, and clients without keep-alive
        ("overhead-forwarded", overhead, {"forwarded": True}),
        ("overhead-close", overhead, {"close": True}),
        (
            "overhead-memory-limit=4gib",
            overhead,
            {"env": ["HARDENED_MEMORY_LIMIT=4GiB"], "variant": "memory-limit=4gib"},
        ),
        (
            "overhead-deadline",
            overhead,
            {"env": ["HARDENED_REQUEST_TIMEOUT=30s"], "variant": "deadline"},
        ),
        ("overhead-access-log", overhead, {"access_log": True}),
        (
            "overhead-metrics",
            overhead,
            {"env": ["HARDENED_METRICS_PATH=/metrics"], "variant": "metrics"},
        ),
    ]
    plan.insert(plan.index((memcg.NAME, memcg, {})) + 1, ("memcg-8kib", memcg, {"kib": 8}))
    results: dict = {}
    started = time.monotonic()
    for label, module, overrides in plan:
        if module.NAME in skip:
            continue
        common.log(f"=== {label}")
        try:
            result = finish(
                module.run(defaults(module, args.classes, **overrides)), not args.no_write
            )
            for key in ("machine", *RUN):
                result.pop(key, None)
        except Exception as exc:  # one broken scenario must not lose the others' results
            traceback.print_exc()
            result = {"scenario": module.NAME, "error": f"{type(exc).__name__}: {exc}"}
        results[label] = result
    summary = {
        "scenario": "all",
        "duration_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    summary = finish(summary, not args.no_write)
    if not (args.no_write or args.no_report):
        common.log("=== report")
        try:
            from bench import report

            summary["report"] = report.run(publish=True)
        except Exception as exc:  # the results are written; a report can be made again from them
            traceback.print_exc()
            summary["report"] = {"error": f"{type(exc).__name__}: {exc}"}
    return summary


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    RUN["command"] = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    # TERM and INT (even when started in the background, where INT is ignored) unwind through every
    # scenario's finally blocks, which stop the masters, nginx and wrk they started.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    if args.scenario == "report":
        from bench import report

        result = report.run(publish=not args.no_publish)
    elif args.scenario == "all":
        result = run_all(args)
    else:
        result = finish(BY_NAME[args.scenario].run(args), not args.no_write)
    json.dump(common.rounded(result), sys.stdout, indent=2)
    sys.stdout.write("\n")
    failed = (
        "error" in result
        or "error" in result.get("report", {})
        or any("error" in r for r in result.get("results", {}).values())
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
