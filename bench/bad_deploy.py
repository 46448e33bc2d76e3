"""A reload to code that cannot start, under load: the master runs with ``-c conf.py`` whose
``raw_env`` comes from a JSON file; the scenario rewrites the file with ``TESTAPP_STARTUP_FAIL=1``
and sends HUP (gunicorn re-reads the config file on HUP and gives ``raw_env`` to the new workers),
then, if the master survived, rewrites it back and sends a good HUP.

Phase ``bad``: wrk for ``--bad-phase`` s, the bad HUP 2 s in. Phase ``good`` (only while the master
is alive): wrk for ``--good-phase`` s, the good HUP 2 s in; it succeeded when a whole new set of
workers finished lifespan startup and serves."""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path

from bench import common
from bench.common import Metric, log, rig

NAME = "bad_deploy"
HELP = "HUP to an app whose lifespan startup fails, under load; then a good HUP"
TITLE = "Bad deploy"
SETUP = (
    "under wrk ({connections} connections), HUP to a config whose app fails lifespan startup; "
    "then, if the master lives, a good HUP"
)
METRICS = (
    Metric("master_alive_after_bad_hup", "master survives", "count", "higher"),
    Metric("errors_during_bad", "errors", "count", "lower"),
    Metric("good_hup_succeeded", "good HUP after serves", "count", "higher"),
)

CONF = """\
import json
raw_env = json.loads(open({path!r}).read())["raw_env"]
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bad-phase", type=int, default=10, help="seconds of wrk around the bad HUP (default 10)"
    )
    p.add_argument(
        "--good-phase", type=int, default=8, help="seconds of wrk around the good HUP (default 8)"
    )
    p.add_argument(
        "--hup-at", type=float, default=2.0, help="seconds into each phase to HUP (default 2)"
    )
    p.add_argument(
        "--settle",
        type=float,
        default=15.0,
        help="longest wait for the good reload's workers after its phase (default 15)",
    )
    common.add_pool_arguments(p, connections=32)


def _deploy(state: Path, deploy: int, fail: bool) -> None:
    raw_env = [f"BENCH_DEPLOY={deploy}"] + (["TESTAPP_STARTUP_FAIL=1"] if fail else [])
    state.write_text(json.dumps({"raw_env": raw_env}))


def _phase(m: rig.Master, seconds: int, hup_at: float, connections: int, before_hup) -> dict:
    died_at = None
    with common.WrkRun(m.port, "/", duration=seconds, connections=connections) as load:
        sent = common.signal_at(m, signal.SIGHUP, [hup_at], load.started, before_each=before_hup)
        while load.running():
            if died_at is None and not common.master_alive(m):
                died_at = load.elapsed()
                log(f"  master exited at t={died_at:.1f} s (status {m.proc.returncode})")
            time.sleep(0.05)
        result = load.result()
    if died_at is None and not common.master_alive(m):
        died_at = seconds
    return {
        "wrk": common.wrk_summary(result),
        "hup_sent_at_s": sent,
        "master_died_at_s": round(died_at, 2) if died_at is not None else None,
    }


def _serves(m: rig.Master) -> bool:
    try:
        return rig.get(m.port, "/", timeout=2)[0] == 200
    except OSError:
        return False


def run_one(cls: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        state, conf = Path(tmp) / "deploy.json", Path(tmp) / "conf.py"
        conf.write_text(CONF.format(path=str(state)))
        _deploy(state, 1, fail=False)
        with common.master(cls, workers=args.workers, args=["-c", str(conf)]) as m:
            first = set(m.workers())
            log(f"bad_deploy: {cls}: bad HUP under load ({args.bad_phase} s)")
            bad = _phase(
                m,
                args.bad_phase,
                args.hup_at,
                args.connections,
                lambda: _deploy(state, 2, fail=True),
            )
            alive = common.master_alive(m)
            out: dict = {
                "master_alive_after_bad_hup": alive,
                "master_exit_status": None if alive else m.proc.returncode,
                "errors_during_bad": bad["wrk"]["socket_errors"] + bad["wrk"]["non_2xx"],
                "good_hup_succeeded": None,
                "errors_during_good": None,
                "bad_phase": bad,
                "initial_workers_alive_after_bad": len(first & set(m.workers())),
                "workers_after_bad": len(m.workers()),
                "serving_after_bad": alive and _serves(m),
            }
            if alive:
                before_good = set(m.workers())
                log(f"bad_deploy: {cls}: good HUP under load ({args.good_phase} s)")
                good = _phase(
                    m,
                    args.good_phase,
                    args.hup_at,
                    args.connections,
                    lambda: _deploy(state, 3, fail=False),
                )
                try:
                    final = set(common.wait_started(m, args.workers, timeout=args.settle))
                except TimeoutError:
                    final = set(m.workers())
                succeeded = (
                    common.master_alive(m)
                    and len(final) == args.workers
                    and not (final & before_good)
                    and _serves(m)
                )
                out.update(
                    {
                        "good_hup_succeeded": succeeded,
                        "errors_during_good": good["wrk"]["socket_errors"] + good["wrk"]["non_2xx"],
                        "good_phase": good,
                        "master_alive_at_end": common.master_alive(m),
                    }
                )
            text = m.log()
            if not common.master_alive(m):
                out["master_output_tail"] = m.output()[-1500:]
            out["log"] = common.log_digest(text)
            out["log_lines"] = common.grep(
                text,
                r"reload rejected|keeps serving|failed to start|HaltServer|Shutting down|"
                r"Worker failed to boot|Reason:|startup failed",
                limit=15,
            )
            out["workers_started"] = len(common.started_pids(m))
            return out


def run(args: argparse.Namespace) -> dict:
    config = {
        "workers": args.workers,
        "connections": args.connections,
        "bad_phase_s": args.bad_phase,
        "good_phase_s": args.good_phase,
        "hup_at_s": args.hup_at,
        "mechanism": "-c conf.py with raw_env from a JSON file; TESTAPP_STARTUP_FAIL=1 for the bad deploy",
    }
    return common.each_class(
        NAME,
        METRICS,
        args,
        run_one,
        lambda r: (
            f"master alive {r['master_alive_after_bad_hup']}, errors during bad {r['errors_during_bad']}, "
            f"good HUP succeeded {r['good_hup_succeeded']}"
        ),
        config,
    )
