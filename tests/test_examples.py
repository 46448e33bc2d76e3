"""The deployment examples users copy (gunicorn_conf_examples/): the systemd unit, the Prometheus
configuration, the Kubernetes manifests and the Dockerfile, checked against the worker's own numbers
and against the tools that read them (systemd-analyze, Kubernetes' schemas, a real gunicorn)."""

from __future__ import annotations

import http.client
import json
import math
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from rig import APPS, GUNICORN, ROOT, Nginx, have
from test_presets import clean_env, gunicorn_cli, printed_config

from hardened_worker import _diagnostics as diagnostics
from hardened_worker import _drain as drain
from hardened_worker import _metrics as metrics
from hardened_worker import config
from hardened_worker.presets import base, kubernetes

EXAMPLES = ROOT / "gunicorn_conf_examples"
UNIT = EXAMPLES / "vm" / "app.service"
MANIFEST = EXAMPLES / "kubernetes" / "deployment.yaml"
DOCKERFILE = EXAMPLES / "kubernetes" / "Dockerfile"
K8S_CONF = str(EXAMPLES / "kubernetes" / "gunicorn.conf.py")
MiB = 1024**2
# What a master may hold: gunicorn, uvicorn and this package, not the app (no preload_app). The
# packaging test measures a real one against it.
MASTER_BUDGET = 100 * MiB


# --- systemd -----------------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values, in order]}}`` of a systemd unit file."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_is_sandboxed_and_agrees_with_the_worker():
    service = unit_directives(UNIT.read_text())["Service"]
    one = {key: values[-1] for key, values in service.items()}
    for key, value in {
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "RuntimeDirectory": "myapp",
        "Type": "notify",
        "NotifyAccess": "all",
        "KillMode": "mixed",
    }.items():
        assert one.get(key) == value, key
    assert one["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    # Everything but these is read-only; "-": a path that does not exist is no error.
    assert all(path.startswith("-/") for path in one["ReadWritePaths"].split())
    assert int(one["TimeoutStopSec"]) > base.graceful_timeout
    assert int(one["TimeoutStartSec"]) > config.load({}).startup_timeout
    # systemctl reload fails on a rejected deploy: the command waits for the reload's verdict,
    # within the job's limit (TimeoutStartSec=).
    reload = one["ExecReload"].split()
    assert (
        reload[:6]
        == ["/srv/myapp/.venv/bin/python", "-m", "hardened_worker", "reload", "--wait", "--pid"]
        and reload[6] == "$MAINPID"
    )
    assert config.parse_duration(reload[reload.index("--timeout") + 1]) < int(
        one["TimeoutStartSec"]
    )
    # The watchdog outlasts the boot (nothing pings before a worker is ready) and gunicorn's own
    # per-worker --timeout, which replaces a single stuck worker first.
    assert int(one["WatchdogSec"]) >= int(one["TimeoutStartSec"])
    assert int(one["WatchdogSec"]) > base.timeout


def test_systemd_analyze_verifies_the_unit(tmp_path):
    assert have("systemd-analyze"), "systemd-analyze is needed (make test installs it)"
    # verify checks that ExecStart's program exists: point it at this venv's gunicorn.
    unit = tmp_path / "myapp.service"
    unit.write_text(
        UNIT.read_text()
        .replace("/srv/myapp/.venv/bin/gunicorn", GUNICORN[0])
        .replace("/srv/myapp/.venv/bin/python", sys.executable)
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "myapp" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr


# --- nginx -------------------------------------------------------------------------------------


def test_nginx_site_passes_uploads_over_one_mib_and_streams_events_unbuffered(master, tmp_path):
    """``nginx -t``, then a real nginx running the site: a 5 MiB upload reaches the app (nginx's
    default answers 413 over 1 MiB), and a server-sent event reaches the client while its stream
    is still open (the app sends one event, then nothing until the client leaves). nginx 1.22
    passed that one event from a buffered location too: this proves the shipped site streams,
    not that ``proxy_buffering off`` is what makes it."""
    m = master(app="sse_once:app")
    nginx = Nginx(tmp_path, m.port)
    # A body over client_body_buffer_size goes to nginx's temp directory, written by its worker
    # processes (nobody, when nginx starts as root): let them reach it below pytest's 0700 dirs.
    for directory in (nginx.dir / "temp", *nginx.dir.parents):
        if directory == Path(tempfile.gettempdir()):
            break
        directory.chmod(directory.stat().st_mode | 0o711)
    (nginx.dir / "temp").chmod(0o777)
    check = subprocess.run(nginx.command("-t"), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    nginx.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
        conn.request(
            "POST", "/", body=b"x" * (5 * MiB), headers={"Content-Type": "application/octet-stream"}
        )
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok")
        conn.close()
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=30) as sock:
            sock.sendall(
                b"GET /events HTTP/1.1\r\nHost: myapp\r\nAccept: text/event-stream\r\n\r\n"
            )
            received = b""
            try:
                while b"data: hello" not in received:
                    chunk = sock.recv(4096)
                    assert chunk, received
                    received += chunk
            except TimeoutError:
                pytest.fail(f"nginx held the event (proxy_buffering?): {received!r}")
        assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
    finally:
        nginx.stop()
    assert "[error]" not in nginx.log(), nginx.log()


# --- Prometheus --------------------------------------------------------------------------------

PROMETHEUS_CONF = str(EXAMPLES / "prometheus" / "gunicorn.conf.py")


def test_prometheus_example_keeps_its_metrics_in_the_units_runtime_directory(master, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # The master prepares the directory before it forks a worker.
    m = master(wait=False, args=["-c", PROMETHEUS_CONF], env={"RUNTIME_DIRECTORY": str(run)})
    m.wait_log(re.escape(f"prometheus multiprocess directory {run / 'prometheus'} ready"))


def test_prometheus_example_has_no_shared_default_directory():
    done = gunicorn_cli("--print-config", "-c", PROMETHEUS_CONF, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert "PROMETHEUS_MULTIPROC_DIR" not in done.stdout
    assert "neither PROMETHEUS_MULTIPROC_DIR nor RUNTIME_DIRECTORY is set" in done.stderr


ALERTS = EXAMPLES / "prometheus" / "alerts.yaml"


def alert_rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def test_alert_rules_use_declared_series_and_labels_and_sum_only_pool_families():
    rules = alert_rules()
    assert rules and all(
        rule.keys() >= {"alert", "expr", "labels", "annotations"} for rule in rules
    )
    assert len({rule["alert"] for rule in rules}) == len(rules)
    declared = {metrics.PREFIX + f.name: f for f in metrics.FAMILIES}
    for f in metrics.FAMILIES:
        if f.kind == "histogram":
            declared.update({metrics.PREFIX + f.name + s: f for s in ("_bucket", "_sum", "_count")})
    values = {
        "code": set(metrics.CODES),
        "cause": set(metrics.RECYCLE_CAUSES),
        "result": {"accepted", "rejected"},
        "state": set(metrics.STATES),
        "reason": set(diagnostics.EXIT_REASONS),
    }
    for rule in rules:
        for name, matchers in re.findall(r"\b(hardened_worker_[a-z_]+)(\{[^}]*\})?", rule["expr"]):
            family = declared.get(name)
            assert family is not None, (rule["alert"], name)
            assert "pid" not in family.labels, (rule["alert"], name)  # pool families only
            for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', matchers):
                assert label in family.labels, (rule["alert"], name, label)
                wanted = value.split("|") if op == "=~" else [value]
                assert set(wanted) <= values[label], (rule["alert"], label, value)


def test_promtool_checks_the_alert_rules():
    assert have("promtool"), (
        "promtool is needed: apt-get install prometheus (Debian ships it there)"
    )
    done = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and f"SUCCESS: {len(alert_rules())} rules found" in done.stdout, (
        done.stdout + done.stderr
    )


# --- Kubernetes --------------------------------------------------------------------------------

_QUANTITY = {"": 1, "Ki": 1024, "Mi": MiB, "Gi": 1024**3, "k": 1000, "M": 1000**2, "G": 1000**3}


def quantity(text: str) -> float:
    """A Kubernetes quantity: ``1Gi`` -> bytes, ``1500m`` -> 1.5."""
    number, unit = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi|k|M|G|)", str(text)).groups()
    return float(number) / 1000 if unit == "m" else float(number) * _QUANTITY[unit]


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def kind(name: str) -> dict:
    [doc] = [d for d in documents() if d["kind"] == name]
    return doc


def container() -> tuple[dict, dict, dict]:
    """The Deployment's pod spec, its one container, and that container's env as a dict."""
    pod = kind("Deployment")["spec"]["template"]["spec"]
    [app] = pod["containers"]
    return (
        pod,
        app,
        {
            e["name"]: e["value"] if "value" in e else downward(e["valueFrom"], app)
            for e in app.get("env", [])
        },
    )


def downward(source: dict, app: dict) -> str:
    """What the kubelet puts in an env var from the downward API's resourceFieldRef (CPU only:
    the quantity divided by the divisor, rounded up)."""
    field = source["resourceFieldRef"]
    group, _, name = field["resource"].partition(".")
    assert name == "cpu", field
    cores = config.parse_cpu(str(app["resources"][group][name])) or 0
    return str(math.ceil(cores / (config.parse_cpu(str(field.get("divisor", "1"))) or 1)))


def test_the_cpu_request_reaches_the_preset_for_a_pod_without_a_cpu_limit():
    _, app, env = container()
    [entry] = [e for e in app["env"] if e["name"] == "HARDENED_CPU_REQUEST"]
    assert entry["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    request = settings_of(env).cpu_request
    assert request == math.ceil(config.parse_cpu(str(app["resources"]["requests"]["cpu"])))
    assert kubernetes.workers_without_limit(request, 64) == math.ceil(request)  # not 64


@pytest.mark.parametrize("version", ["1.27.0", kubernetes_validate.latest_version()])
def test_every_manifest_passes_kubernetes_schemas(version):
    docs = documents()
    assert {d["kind"] for d in docs} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for doc in docs:
        kubernetes_validate.validate(
            doc, version, strict=True
        )  # raises on any unknown or bad field


def settings_of(env: dict) -> config.Settings:
    """The worker's settings from the pod's env (a renamed or bad HARDENED_* value raises)."""
    return config.load({k: v for k, v in env.items() if k.startswith(config.PREFIX)})


def test_stop_budget_fits_the_grace_period():
    pod, _, env = container()
    grace = pod["terminationGracePeriodSeconds"]
    settings = settings_of(env)
    assert settings.termination_grace_period == grace
    graceful = kubernetes.graceful_timeout_for(grace)
    delay = (
        settings.drain_delay
        if "HARDENED_DRAIN_DELAY" in env
        else kubernetes.drain_delay_for(graceful)
    )
    # The drain delay runs inside graceful_timeout (drain.plan counts both from SIGTERM), which
    # the master ends with its own SIGKILL of late workers: the kubelet's must come later.
    assert delay > 0 and drain.check_budget(graceful, delay) is None
    assert grace >= graceful + 1


def test_workers_at_their_hard_limit_plus_the_master_fit_the_container():
    _, app, env = container()
    limits = app["resources"]["limits"]
    workers = int(env.get("WEB_CONCURRENCY") or math.ceil(quantity(limits["cpu"])))
    settings = settings_of(env)
    soft, hard = settings.memory_limit, settings.memory_hard_limit or settings.memory_limit * 1.25
    assert soft < hard
    assert workers * hard + MASTER_BUDGET < quantity(limits["memory"])
    assert app["resources"]["requests"]["memory"] == limits["memory"]


def test_probes_security_and_volumes():
    pod, app, env = container()
    assert app["readinessProbe"]["failureThreshold"] > 1
    startup = app["startupProbe"]
    assert startup["httpGet"]["path"] == app["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # The startup probe must not give up before the worker's own startup timeout does.
    assert startup["periodSeconds"] * startup["failureThreshold"] > config.load({}).startup_timeout
    assert "livenessProbe" not in app  # /healthz answers 503 during a normal drain
    security = {**pod["securityContext"], **app["securityContext"]}
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert f"USER {security['runAsUser']}:{security['runAsGroup']}" in DOCKERFILE.read_text()
    mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert mounts["/tmp"] in empty_dirs and mounts[env["PROMETHEUS_MULTIPROC_DIR"]] in empty_dirs


def test_disruption_budget_covers_the_deployment_and_leaves_a_pod():
    deployment, budget = kind("Deployment"), kind("PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert (
        0 < budget["spec"]["minAvailable"] < kind("HorizontalPodAutoscaler")["spec"]["minReplicas"]
    )


def test_the_autoscaler_owns_the_replicas():
    deployment, hpa = kind("Deployment"), kind("HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"]  # kubectl apply would reset the HPA's count
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert (
        metric["resource"]["name"] == "cpu"
        and metric["resource"]["target"]["type"] == "Utilization"
    )
    _, app, _ = container()
    assert quantity(app["resources"]["requests"]["cpu"]) > 0  # utilization is of the request


def test_replicas_spread_over_nodes_and_zones():
    template = kind("Deployment")["spec"]["template"]
    constraints = template["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in constraints} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for c in constraints:
        assert c["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


def hardened_settings(conf: str) -> dict:
    """``python -m hardened_worker print-config``: {HARDENED_X: value} as the worker reads them."""
    done = subprocess.run(
        [sys.executable, "-m", "hardened_worker", "print-config", "-c", conf, "testapp:app"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=APPS,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {
        name.strip(): value.split("#")[0].strip()
        for name, _, value in (line.partition("=") for line in done.stdout.splitlines())
        if name.startswith("HARDENED_")
    }


def test_the_scrape_annotations_name_the_metrics_port_and_path():
    template = kind("Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    _, app, env = container()
    settings = hardened_settings(K8S_CONF)
    assert annotations["prometheus.io/scrape"] == "true"
    port = annotations["prometheus.io/port"]
    assert settings["HARDENED_METRICS_PORT"] == port
    assert annotations["prometheus.io/path"] == settings["HARDENED_METRICS_PATH"] == "/metrics"
    assert f"'0.0.0.0:{port}'" in printed_config(K8S_CONF)["bind"]  # gunicorn listens there
    assert {"name": "metrics", "containerPort": int(port)} in app["ports"]
    assert settings_of(env).metrics_allow  # the scraper is not on the pod's loopback
    service = kind("Service")
    assert all(
        p["targetPort"] != "metrics" and p.get("port") != int(port)
        for p in service["spec"]["ports"]
    )  # metrics stay off the Service


def test_the_control_socket_is_on_a_writable_volume():
    config = printed_config(K8S_CONF)
    assert config["control_socket_disable"] == "False"
    pod, app, _ = container()
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in app["volumeMounts"] if m["name"] in empty_dirs]
    assert any(config["control_socket"].startswith(path.rstrip("/") + "/") for path in writable), (
        config["control_socket"],
        writable,
    )


def test_no_prestop_sleep_and_the_manifest_says_to_remove_one():
    _, app, _ = container()
    assert "preStop" not in app.get("lifecycle", {})
    text = MANIFEST.read_text()
    assert "preStop" in text and "REMOVE IT" in text


# --- Dockerfile (no Docker engine here: read statically; test_packaging runs its HEALTHCHECK) ---


def dockerfile() -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]``, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in text.splitlines())
        if word and not word.startswith("#")
    ]


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's command, exec form."""
    [args] = [args for word, args in dockerfile() if word == "HEALTHCHECK"]
    return json.loads(args[args.index("CMD") + 3 :])


def test_dockerfile_pins_the_base_image_and_runs_as_a_user():
    steps = dockerfile()
    [image] = [args for word, args in steps if word == "FROM"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", image)
    words = [word for word, _ in steps]
    user = words.index("USER")
    assert steps[user][1].split(":")[0] not in ("root", "0")
    assert user > max(
        i for i, w in enumerate(words) if w == "RUN"
    )  # installs as root, serves as not
    # The app's own requirements are installed, from a layer of their own.
    copy = steps.index(("COPY", "requirements.txt /app/requirements.txt"))
    assert steps[copy + 1] == ("RUN", "pip install -r /app/requirements.txt")
    [cmd] = [args for word, args in steps if word == "CMD"]
    assert json.loads(cmd)[0] == "gunicorn"  # exec form: gunicorn is PID 1 and gets SIGTERM


def test_dockerfile_healthcheck_needs_no_curl():
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and "urllib.request" in command[2]
    assert not re.search(r"\b(curl|wget)\b", shlex.join(command))
