"""The presets, their hook composition and the copyable examples, against real gunicorn masters.

Every preset and example passes ``gunicorn --check-config`` and is started for real: a request, a
HUP, a TERM. The Kubernetes preset sizes itself from a fake cgroup directory. nginx runs the vm
example's site file in front of the vm example's gunicorn.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rig import APPS, GUNICORN, ROOT, Master, Nginx, get, wait_for

from hardened_worker import _drain as drain
from hardened_worker.presets import _hooks as hooks
from hardened_worker.presets import _jsonlog as jsonlog
from hardened_worker.presets import kubernetes

EXAMPLES = ROOT / "gunicorn_conf_examples"
K8S_ENV = {"HARDENED_DRAIN_DELAY": "0.5s"}  # the environment wins over the preset's 5 s default

# name -> (-c value, family)
CONFIGS = {
    "preset-base": ("python:hardened_worker.presets.base", "base"),
    "preset-vm": ("python:hardened_worker.presets.vm", "vm"),
    "preset-kubernetes": ("python:hardened_worker.presets.kubernetes", "kubernetes"),
    "example-vm": (str(EXAMPLES / "vm" / "gunicorn.conf.py"), "vm"),
    "example-kubernetes": (str(EXAMPLES / "kubernetes" / "gunicorn.conf.py"), "kubernetes"),
    "example-memory-constrained": (
        str(EXAMPLES / "memory-constrained" / "gunicorn.conf.py"),
        "kubernetes",
    ),
    "example-prometheus": (str(EXAMPLES / "prometheus" / "gunicorn.conf.py"), "kubernetes"),
}


@pytest.fixture
def unstarted(tmp_path):
    """Masters whose command line the test may edit before ``start()``; all torn down after."""
    made: list[Master] = []

    def make(**kwargs) -> Master:
        m = Master(tmp_path, **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


def without_workers_option(m: Master) -> Master:
    """Drop the rig's ``-w N`` so the configuration's own ``workers`` counts."""
    index = m.cmd.index("-w")
    del m.cmd[index : index + 2]
    return m


def fake_cgroup(
    path: Path,
    cpu_max: str | None = None,
    memory_max: str | None = None,
    v1_quota: tuple[str, str] | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (path / "cpu.max").write_text(cpu_max + "\n")
    if memory_max is not None:
        (path / "memory.max").write_text(memory_max + "\n")
    if v1_quota is not None:
        (path / "cpu").mkdir()
        (path / "cpu" / "cpu.cfs_quota_us").write_text(v1_quota[0] + "\n")
        (path / "cpu" / "cpu.cfs_period_us").write_text(v1_quota[1] + "\n")
    return path


def clean_env(**extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HARDENED_", "TESTAPP_", "PROMETHEUS_"))
        and k
        not in (
            "WEB_CONCURRENCY",
            "PORT",
            "NOTIFY_SOCKET",
            "RUNTIME_DIRECTORY",
            "TERMINATION_GRACE_PERIOD_SECONDS",
        )
    }
    return {**env, **extra}


def gunicorn_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # --chdir, not --pythonpath: gunicorn 27's --check-config and --print-config import the app
    # before they apply --pythonpath (they return from run() before it), but after --chdir.
    return subprocess.run(
        [*GUNICORN, *args, "testapp:app", "--chdir", str(APPS)],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        cwd=ROOT,
        timeout=60,
    )


def printed_config(config: str, **env: str) -> dict:
    """What gunicorn itself makes of a configuration: ``--print-config``, parsed."""
    done = gunicorn_cli("--print-config", "-c", config, env=clean_env(**env))
    assert done.returncode == 0, done.stderr
    values = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition(" = ")
        values[name.strip()] = value.strip()
    return values


# --- every preset and example: checked, then run ---------------------------------------------


def test_every_preset_and_example_passes_check_config():
    failures = {}
    for name, (config, _) in CONFIGS.items():
        done = gunicorn_cli("--check-config", "-c", config)
        if done.returncode != 0:
            failures[name] = done.stdout + done.stderr
    assert failures == {}


def test_every_example_file_is_listed():
    listed = {Path(c).resolve() for c, _ in CONFIGS.values() if not c.startswith("python:")}
    assert set(EXAMPLES.glob("*/gunicorn.conf.py")) == listed


@pytest.mark.parametrize("name", list(CONFIGS))
def test_serves_reloads_on_hup_and_stops_on_term(name, unstarted, tmp_path):
    config, family = CONFIGS[name]
    env: dict = {}
    if family == "kubernetes":
        # CPU limit 0.5 -> 1 worker, whatever the machine; the memory-constrained example
        # shares a 1 GiB limit.
        env = {
            **K8S_ENV,
            "HARDENED_CGROUP_ROOT": str(
                fake_cgroup(tmp_path / "cgroup", cpu_max="50000 100000", memory_max=str(1024**3))
            ),
        }
    if family == "vm":
        (tmp_path / "run").mkdir()
        env["RUNTIME_DIRECTORY"] = str(tmp_path / "run")
    if "prometheus" in name:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prometheus")
    m = unstarted(args=["-c", config], env=env)
    if family == "kubernetes":
        without_workers_option(m)
    m.start()
    count = 1 if family == "kubernetes" else 2
    m.wait_log(r"ready in [\d.]+ s \(generation 1\)", count=count)  # booted, not just forked
    first = m.wait_workers(count)
    assert get(m.port, "/") == (200, b"ok")
    assert get(m.port, "/healthz")[0] == (200 if family == "kubernetes" else 404)
    log = m.log()
    assert (
        f"hardened_worker: master {m.pid} started: {count} workers of hardened_worker.Worker" in log
    )
    assert "keep-alive 75 s" in log
    if family == "kubernetes":
        assert "workers 1 from CPU limit 0.5" in log
    if family == "vm":
        assert (tmp_path / "run" / "gunicorn.pid").read_text().strip() == str(m.pid)

    m.signal(signal.SIGHUP)
    m.wait_log(r"ready in [\d.]+ s \(generation 2\)", count=count)
    for pid in first:
        m.wait_log(rf"hardened_worker: worker {pid} exited: reason reload")
    assert f"hardened_worker: master {m.pid} reloading (HUP): {count} new workers boot" in m.log()
    assert get(m.port, "/") == (200, b"ok")
    second = m.wait_workers(count)

    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    log = m.log()
    for pid in second:
        assert f"hardened_worker: worker {pid} exited: reason shutdown" in log
    assert f"hardened_worker: master {m.pid} stopped" in log
    if family == "kubernetes":
        # The delay left when the worker looked (counted from SIGTERM): the environment's 0.5 s,
        # not the preset's 5 s default.
        delays = [
            float(d) for d in re.findall(r"drains in ([\d.]+) s \(HARDENED_DRAIN_DELAY\)", log)
        ]
        assert delays and all(d <= 0.5 for d in delays)
    assert "Traceback" not in log and "failed" not in log


# --- the Kubernetes preset's arithmetic -----------------------------------------------------


def test_a_bad_preset_variable_stops_gunicorn_with_one_line():
    for env, line in [
        (
            {"HARDENED_LOG_FORMAT": "xml"},
            "hardened_worker: HARDENED_LOG_FORMAT='xml' is not one of text|json",
        ),
        (
            {"HARDENED_ACCESS_LOG": "maybe"},
            "hardened_worker: HARDENED_ACCESS_LOG='maybe' is not a boolean",
        ),
        (
            {"HARDENED_TERMINATION_GRACE_PERIOD": "30 sec"},
            "hardened_worker: HARDENED_TERMINATION_GRACE_PERIOD='30 sec' is not a duration",
        ),
        (
            {"HARDENED_TERMINATION_GRACE_PERIOD": "0"},
            "hardened_worker: HARDENED_TERMINATION_GRACE_PERIOD='0' must be more than 0",
        ),
        ({"PORT": "http"}, "hardened_worker: PORT='http' is not a positive whole number"),
        (
            {"TERMINATION_GRACE_PERIOD_SECONDS": "60"},  # renamed: refused, not silently ignored
            "hardened_worker: TERMINATION_GRACE_PERIOD_SECONDS is now called HARDENED_TERMINATION_GRACE_PERIOD",
        ),
    ]:
        done = gunicorn_cli(
            "--check-config",
            "-c",
            "python:hardened_worker.presets.kubernetes",
            env=clean_env(**env),
        )
        assert done.returncode == 1, env
        assert done.stderr.strip().startswith(line)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "cgroup,request_,expected",
    [
        ({"cpu_max": "50000 100000"}, "", lambda cpus: 1),  # 0.5 CPU
        ({"cpu_max": "200000 100000"}, "", lambda cpus: min(2, cpus)),  # 2 CPUs
        ({"cpu_max": "200000 100000"}, "8", lambda cpus: min(2, cpus)),  # the limit wins
        (
            {"cpu_max": "max 100000"},
            "",
            lambda cpus: 1,
        ),  # unlimited, no request: one, not one per CPU
        ({"v1_quota": ("150000", "100000")}, "", lambda cpus: min(2, cpus)),  # cgroup v1: 1.5 CPUs
        ({}, "", lambda cpus: 1),  # no cgroup files at all
        (
            {"cpu_max": "max 100000"},
            "2",
            lambda cpus: min(2, cpus),
        ),  # the downward API's requests.cpu
        ({"cpu_max": "max 100000"}, "1500m", lambda cpus: min(2, cpus)),
        ({"cpu_max": "max 100000"}, "0", lambda cpus: 1),  # BestEffort: no request
    ],
)
def test_kubernetes_workers_follow_the_cpu_limit_else_the_request(
    tmp_path, cgroup, request_, expected
):
    root = fake_cgroup(tmp_path / "cgroup", **cgroup)
    config = printed_config(
        "python:hardened_worker.presets.kubernetes",
        HARDENED_CGROUP_ROOT=str(root),
        HARDENED_CPU_REQUEST=request_,
    )
    assert int(config["workers"]) == expected(len(os.sched_getaffinity(0)))


def test_kubernetes_without_a_cpu_limit_or_request_says_it_runs_one_worker(master, tmp_path):
    root = fake_cgroup(tmp_path / "cgroup", cpu_max="max 100000")
    m = master(
        args=["-c", "python:hardened_worker.presets.kubernetes", "-w", "1"],
        env={"HARDENED_CGROUP_ROOT": str(root)},
    )
    m.wait_log("kubernetes preset: workers")
    lines = [line for line in m.log().splitlines() if "kubernetes preset: workers" in line]
    assert (
        len(lines) == 1
        and (
            "no CPU limit and no CPU request: one worker; set the pod's CPU "
            "limit, HARDENED_CPU_REQUEST from requests.cpu"
        )
        in lines[0]
    )


def test_kubernetes_web_concurrency_wins_and_a_bad_one_is_one_line(tmp_path):
    root = str(fake_cgroup(tmp_path / "cgroup", cpu_max="50000 100000"))
    config = printed_config(
        "python:hardened_worker.presets.kubernetes", HARDENED_CGROUP_ROOT=root, WEB_CONCURRENCY="3"
    )
    assert config["workers"] == "3"
    done = gunicorn_cli(
        "--check-config",
        "-c",
        "python:hardened_worker.presets.kubernetes",
        env=clean_env(WEB_CONCURRENCY="0"),
    )  # gunicorn itself crashes on "lots"
    assert done.returncode != 0
    assert "hardened_worker: WEB_CONCURRENCY='0' is not a positive whole number" in done.stderr
    assert "Traceback" not in done.stderr


def test_kubernetes_grace_period_sets_graceful_timeout_and_drain_delay():
    config = printed_config("python:hardened_worker.presets.kubernetes", PORT="9000")
    assert config["bind"] == "['0.0.0.0:9000']"
    assert config["graceful_timeout"] == "25"
    assert config["raw_env"] == "['HARDENED_HEALTH_PATH=/healthz', 'HARDENED_DRAIN_DELAY=5s']"
    if os.path.isdir("/dev/shm"):
        assert config["worker_tmp_dir"] == "/dev/shm"
    short = printed_config(
        "python:hardened_worker.presets.kubernetes",
        HARDENED_TERMINATION_GRACE_PERIOD="10s",
        HARDENED_HEALTH_PATH="/ready",
    )
    assert short["graceful_timeout"] == "5"
    # The environment's own value is kept (not clobbered); the delay shrinks to fit.
    assert short["raw_env"] == "['HARDENED_DRAIN_DELAY=2s']"


def test_kubernetes_defaults_always_fit_the_drain_budget():
    for grace in range(1, 601):
        graceful = kubernetes.graceful_timeout_for(grace)
        assert graceful == max(1, grace - kubernetes.MARGIN)
        delay = kubernetes.drain_delay_for(graceful)
        assert 0 <= delay <= kubernetes.MAX_DRAIN_DELAY
        assert drain.check_budget(graceful, delay) is None, grace
    assert kubernetes.drain_delay_for(25) == 5.0


# --- the presets' own variables: HARDENED_*, in the one settings table -------------------------


def test_the_apps_own_unprefixed_variables_are_left_alone():
    # Common app settings (structlog's LOG_FORMAT=console) once stopped gunicorn or moved its bind.
    app_env = {
        "LOG_FORMAT": "console",
        "ACCESS_LOG": "maybe",
        "BIND": "db:5432",
        "PIDFILE": "/nowhere/x",
    }
    for config in (
        "python:hardened_worker.presets.vm",
        "python:hardened_worker.presets.kubernetes",
    ):
        done = gunicorn_cli("--check-config", "-c", config, env=clean_env(**app_env))
        assert done.returncode == 0, done.stderr
    vm = printed_config("python:hardened_worker.presets.vm", **app_env)
    assert (vm["bind"], vm["pidfile"], vm["accesslog"]) == ("['127.0.0.1:8000']", "None", "None")
    k8s = printed_config("python:hardened_worker.presets.kubernetes", **app_env)
    assert k8s["graceful_timeout"] == "25" and k8s["logconfig_dict"] == "{}"


def test_the_prefixed_preset_variables_configure_the_presets(tmp_path):
    vm = printed_config(
        "python:hardened_worker.presets.vm",
        HARDENED_BIND="127.0.0.1:9001, unix:/run/a.sock",
        HARDENED_PIDFILE=str(tmp_path / "app.pid"),
        HARDENED_ACCESS_LOG="true",
    )
    assert vm["bind"] == "['127.0.0.1:9001', 'unix:/run/a.sock']"
    assert vm["pidfile"] == str(tmp_path / "app.pid") and vm["accesslog"] == "-"
    k8s = printed_config(
        "python:hardened_worker.presets.kubernetes",
        HARDENED_TERMINATION_GRACE_PERIOD="1m",
        HARDENED_LOG_FORMAT="json",
    )
    assert k8s["graceful_timeout"] == "55" and "JsonFormatter" in k8s["logconfig_dict"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_check_config_refuses_a_bad_hardened_value_with_one_line(name):
    # gunicorn --check-config never imports the worker class; the preset checks at its import.
    done = gunicorn_cli(
        "--check-config", "-c", CONFIGS[name][0], env=clean_env(HARDENED_MEMORY_LIMIT="lots")
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "hardened_worker: HARDENED_MEMORY_LIMIT='lots' is not a size; use e.g. 512Mi"
    )


REPLACING_CONF = """
from hardened_worker.presets.kubernetes import *

raw_env = ["HARDENED_LOG_FORMAT=json"]  # replaces the preset's defaults, and is too late for LOG_FORMAT
"""


def test_a_config_that_replaces_the_presets_raw_env_is_warned_about(master, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(REPLACING_CONF)
    m = master(args=["-c", str(conf)])
    m.wait_log(r"ready in [\d.]+ s \(generation 1\)", count=2)
    log = m.log()
    assert (
        "hardened_worker: the configuration replaced the kubernetes preset's raw_env and lost "
        "HARDENED_HEALTH_PATH=/healthz, HARDENED_DRAIN_DELAY=5s; extend it instead"
    ) in log
    assert (
        "hardened_worker: HARDENED_LOG_FORMAT in raw_env has no effect: the base preset reads it "
        "from the environment when the configuration loads; set it there"
    ) in log
    assert get(m.port, "/healthz")[0] == 404  # the app's: what the warning is about
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0


def test_warnings_are_silent_for_a_config_that_extends_raw_env(monkeypatch):
    from gunicorn.config import Config

    from hardened_worker import _checks as checks
    from hardened_worker import presets

    monkeypatch.setattr(presets, "RAW_ENV_DEFAULTS", {"test": {"HARDENED_HEALTH_PATH": "/healthz"}})
    cfg = Config()
    cfg.set("raw_env", ["HARDENED_HEALTH_PATH=/healthz", "HARDENED_MEMORY_LIMIT=400Mi"])
    assert checks.warnings(cfg) == []
    cfg.set("raw_env", ["HARDENED_MEMORY_LIMIT=400Mi", "HARDENED_BIND=0.0.0.0:80"])
    assert [line.split(": ", 1)[1].split()[:3] for line in checks.warnings(cfg)] == [
        ["the", "configuration", "replaced"],
        ["HARDENED_BIND", "in", "raw_env"],
    ]


# --- hook composition -------------------------------------------------------------------------


USER_CONF = """
import os
from hardened_worker.presets.kubernetes import *

def child_exit(server, worker):
    with open(os.environ["USER_HOOK_FILE"], "a") as f:
        f.write(f"user child_exit {worker.pid} {worker.exit_reason}\\n")

@also
def on_reload(server):
    with open(os.environ["USER_HOOK_FILE"], "a") as f:
        f.write("user on_reload\\n")
"""


def test_a_user_config_that_imports_a_preset_runs_both_hooks(master, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(USER_CONF)
    record = tmp_path / "user-hooks.txt"
    m = master(args=["-c", str(conf)], env={"USER_HOOK_FILE": str(record), **K8S_ENV})
    m.wait_log(r"ready in [\d.]+ s \(generation 1\)", count=2)
    [victim, _] = m.wait_workers(2)
    os.kill(victim, signal.SIGTERM)  # gunicorn replaces it
    m.wait_log(rf"hardened_worker: worker {victim} exited: reason shutdown")
    wait_for(
        lambda: record.exists() and f"user child_exit {victim} shutdown" in record.read_text(), 5
    )
    m.signal(signal.SIGHUP)
    m.wait_log(r"reloading \(HUP\)")
    wait_for(lambda: "user on_reload" in record.read_text(), 5)
    m.wait_log(r"exited: reason reload", count=2)
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    log, lines = m.log(), record.read_text().splitlines()
    # The plain override is composed (and said so, once per configuration load); @also is silent.
    assert log.count("your child_exit hook runs after the kubernetes preset's") == 2
    assert "your on_reload hook" not in log
    assert lines.count("user on_reload") == 1
    preset_exits = re.findall(r"hardened_worker: worker (\d+) exited: reason (\S+)", log)
    user_exits = re.findall(r"user child_exit (\d+) (\S+)", "\n".join(lines))
    assert len(preset_exits) == 5  # the victim, two on HUP, two on TERM
    assert sorted(user_exits) == sorted(preset_exits)


class FakeServer:
    """Just what the hooks touch of gunicorn's Arbiter, around a real gunicorn Config."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.pid = os.getpid()
        self.log = logging.getLogger("test.presets.hooks")


def make_server(**values):
    from gunicorn.config import Config

    cfg = Config()
    for key, value in values.items():
        cfg.set(key, value)
    return FakeServer(cfg)


@pytest.fixture
def preset():
    """A preset of our own, recording what its hooks saw."""
    calls: list = []
    parent = hooks.Hooks("parent")
    child = hooks.Hooks("child", parent=parent)
    parent.on("child_exit")(lambda server, worker: calls.append(("parent child_exit", worker)))
    child.on("child_exit")(lambda server, worker: calls.append(("child child_exit", worker)))
    child.on("on_starting")(lambda server: calls.append(("child on_starting",)))
    namespace: dict = {}
    exported = child.export(namespace)
    return child, namespace, exported, calls


def test_export_binds_chains_with_gunicorns_arity(preset):
    child, namespace, exported, calls = preset
    assert set(exported) == {"child_exit", "also", *hooks.INSTALL_POINTS}
    server = make_server(**{k: v for k, v in namespace.items() if k != "also"})  # validators pass
    server.cfg.child_exit(server, "w1")
    assert calls == [("parent child_exit", "w1"), ("child child_exit", "w1")]


def test_install_composes_a_replaced_hook_and_keeps_arity(preset, caplog):
    child, namespace, _, calls = preset
    server = make_server(
        on_starting=namespace["on_starting"],
        child_exit=lambda server, worker: calls.append(("user", worker)),
    )
    with caplog.at_level(logging.INFO, logger="test.presets.hooks"):
        server.cfg.on_starting(server)
    server.cfg.child_exit(server, "w")
    assert calls == [
        ("child on_starting",),
        ("parent child_exit", "w"),
        ("child child_exit", "w"),
        ("user", "w"),
    ]
    assert "your child_exit hook runs after the child preset's" in caplog.text
    # Installing again changes nothing (no double composition).
    before = server.cfg.child_exit
    child.install(server)
    assert server.cfg.child_exit is before


def test_also_composes_explicitly_and_a_failing_preset_part_does_not_stop_the_user(preset):
    child, namespace, _, calls = preset
    child.on("worker_exit")(lambda server, worker: 1 / 0)

    @namespace["also"]
    def worker_exit(server, worker):
        calls.append(("user worker_exit", worker))

    server = make_server(worker_exit=worker_exit)  # gunicorn's validator checks the arity
    server.cfg.worker_exit(server, "w")
    assert calls == [("user worker_exit", "w")]
    with pytest.raises(ValueError, match="not a gunicorn server hook"):
        namespace["also"](lambda server, worker: None)  # "<lambda>" names no hook
    named = namespace["also"]("child_exit")(lambda server, worker: calls.append(("named", worker)))
    named(server, "v")
    assert calls[-3:] == [("parent child_exit", "v"), ("child child_exit", "v"), ("named", "v")]


def test_a_user_hook_calling_the_preset_hook_itself_runs_it_once(preset):
    child, namespace, _, calls = preset

    def child_exit(server, worker):
        namespace["child_exit"](server, worker)  # the old way: call the preset's hook by hand
        calls.append(("user", worker))

    server = make_server(child_exit=child_exit)
    child.install(server)
    server.cfg.child_exit(server, "w")
    assert calls == [("parent child_exit", "w"), ("child child_exit", "w"), ("user", "w")]


def test_a_replaced_on_starting_still_runs_the_presets_part_late_with_a_warning(preset, caplog):
    child, namespace, _, calls = preset
    server = make_server(
        on_starting=lambda server: calls.append(("user on_starting",)),
        nworkers_changed=lambda server, new, old: None,
        when_ready=namespace["when_ready"],
    )
    server.cfg.on_starting(server)  # the user's alone: nothing installed it yet
    with caplog.at_level(logging.WARNING, logger="test.presets.hooks"):
        server.cfg.when_ready(server)
    assert calls == [("user on_starting",), ("child on_starting",)]
    assert "your on_starting hook replaced the child preset's" in caplog.text


# --- JSON logs ------------------------------------------------------------------------------------


def test_json_formatter_keeps_a_stack_on_one_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "gunicorn.error", logging.ERROR, __file__, 1, "worker %s failed", (7,), sys.exc_info()
        )
    line = jsonlog.JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == "worker 7 failed" and doc["level"] == "ERROR"
    assert "RuntimeError: boom" in doc["exception"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", doc["time"])
    access = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/x", "1.1", 200),
        None,
    )
    doc = json.loads(jsonlog.JsonFormatter().format(access))
    assert (doc["method"], doc["path"], doc["status_code"]) == ("GET", "/x", 200)
    assert "status" not in doc  # Datadog's reserved attribute: the line's severity


def test_log_format_json_makes_every_line_json(unstarted):
    m = unstarted(
        args=["-c", "python:hardened_worker.presets.base"],
        env={"HARDENED_LOG_FORMAT": "json", "HARDENED_ACCESS_LOG": "true"},
    )
    m.start()
    assert get(m.port, "/")[0] == 200
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
    lines = [line for line in m.output().splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # every line parses
    messages = [d["message"] for d in docs]
    assert any(re.match(r"hardened_worker: worker \d+ ready in", msg) for msg in messages)
    assert any(msg.startswith(f"hardened_worker: master {m.pid} started") for msg in messages)
    access = [d for d in docs if d.get("path") == "/"]  # access log on
    assert access and all(d["status_code"] == 200 and "status" not in d for d in access)
    ids = [d["request_id"] for d in access]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == len(ids)


# --- Prometheus -------------------------------------------------------------------------------


def test_prometheus_multiprocess_bookkeeping(unstarted, tmp_path):
    """The preset keeps the directory; the worker's metrics path answers the pool's series and
    the app's own prometheus_client metrics in one scrape, each name once."""
    from prometheus_client.parser import text_string_to_metric_families

    directory = tmp_path / "prometheus"
    directory.mkdir()
    stale = directory / "counter_99999999.db"
    stale.write_bytes(b"stale")
    m = unstarted(
        app="promapp:app",
        args=["-c", str(EXAMPLES / "prometheus" / "gunicorn.conf.py")],
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), **K8S_ENV},
    )
    m.start()
    m.wait_log(r"ready in [\d.]+ s \(generation 1\)", count=2)
    [victim, _] = m.wait_workers(2)
    assert not stale.exists()
    assert "prometheus multiprocess directory" in m.log()
    live_gauge = directory / f"gauge_livesum_{victim}.db"
    live_gauge.write_bytes(b"")
    os.kill(victim, signal.SIGTERM)
    m.wait_log(rf"worker {victim} exited: reason shutdown")
    wait_for(lambda: not live_gauge.exists(), 5)  # mark_process_dead
    for _ in range(3):
        assert get(m.port, "/")[0] == 200

    def scraped():
        status, body = get(m.port, "/metrics")
        assert status == 200, body[:200]
        families = list(text_string_to_metric_families(body.decode()))
        names = [f.name for f in families]
        assert len(names) == len(set(names)), names  # no name twice in one answer
        found = {
            (s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples
        }
        app_seen = found.get(("promapp_requests_total", frozenset()), 0)
        exits = found.get(
            ("hardened_worker_worker_exits_total", frozenset({("reason", "shutdown")}))
        )
        return found if app_seen >= 3 and exits == 1 else None

    wait_for(scraped, 10)
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0


# --- nginx in front ----------------------------------------------------------------------------


def test_nginx_site_in_front_of_the_vm_example(master, tmp_path):
    m = master(args=["-c", str(EXAMPLES / "vm" / "gunicorn.conf.py")])
    nginx = Nginx(tmp_path, m.port)
    check = subprocess.run(nginx.command("-t"), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    nginx.start()
    try:
        for _ in range(5):  # on nginx's kept-alive upstream connections
            assert get(nginx.port, "/", timeout=2) == (200, b"ok")
    finally:
        nginx.stop()
    assert "[error]" not in nginx.log()
    m.signal(signal.SIGTERM)
    assert m.wait_exit(15) == 0
