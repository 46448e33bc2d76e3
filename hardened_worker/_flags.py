"""What this worker does with each of gunicorn's settings: one table, read by the start-up warning
and the documentation (``docs/gunicorn-settings.md`` is :func:`markdown_table`; a test keeps
them equal and checks that every setting the installed gunicorn knows is in the table).

Most settings belong to gunicorn's master and hold as gunicorn documents them. The rest are
either changed here (``CHANGED``: what the worker does instead) or have no effect under any
uvicorn-based worker (``IGNORED``: UvicornWorker ignores them too): set to anything but their
default, those are named in one warning line at start, never silently dropped.
"""

from __future__ import annotations

from typing import Any

AS_GUNICORN = "as gunicorn documents it"

CHANGED: dict[str, str] = {
    "workers": "as gunicorn; one more while a worker recycles (its successor starts first)",
    "worker_class": "`hardened_worker.Worker` (or a subclass)",
    "worker_connections": "a cap on each worker's open connections: at the cap it stops accepting "
    "and the kernel hands new connections to a sibling (or queues them); "
    "gunicorn's default 1000 is not enforced, as under UvicornWorker",
    "max_requests": "a worker past it recycles with its successor started first, one worker at a "
    "time across the pool: under load a worker may serve more before its turn",
    "max_requests_jitter": "as gunicorn (added when the worker is forked)",
    "timeout": "as gunicorn; the heartbeat comes from the event loop's tick, also during startup "
    "and drain, and the SIGABRT dumps every thread's stack",
    "graceful_timeout": "the drain budget (HARDENED_DRAIN_DELAY included); 80% of it is the "
    "default HARDENED_READY_TIMEOUT",
    "keepalive": "uvicorn's `timeout_keep_alive`",
    "limit_request_line": "enforced on the request head (414), same meaning as gunicorn's parser",
    "limit_request_fields": "enforced on the request head (431), same meaning as gunicorn's parser",
    "limit_request_field_size": "enforced on the request head (431), same meaning as gunicorn's "
    "parser",
    "reload": "a changed file recycles every worker, one at a time, its successor started first "
    "(with the new code unless `--preload`)",
    "check_config": "gunicorn never imports the worker for it: the HARDENED_* checks do not run; "
    "use `python -m hardened_worker check-config`",
    "reuse_port": "each worker's own socket (gunicorn 27); a leaving worker serves what is queued "
    "on it; the master warns unless `net.ipv4.tcp_migrate_req` is 1",
    "forwarded_allow_ips": "the proxies trusted for forwarded headers (HARDENED_FORWARDED); never "
    "an admission to the metrics path",
    "accesslog": "the access log, written by this worker (uvicorn's own is off)",
    "access_log_format": "gunicorn's atoms, filled from the ASGI request",
    "statsd_host": "request metrics (`gunicorn.requests`, duration, status) with or without an "
    "access log",
    "child_exit": "as gunicorn; `worker.exit_reason` says why the worker left",
    "nworkers_changed": "as gunicorn (TTIN/TTOU, HUP); a recycle's extra worker does not change "
    "the count",
    "worker_exit": "runs on every exit that is not a SIGKILL (the drain exits 0)",
    "worker_int": "runs on SIGINT/SIGQUIT (quick stop)",
    "worker_abort": "runs on SIGABRT (`--timeout`), after the stacks are logged",
    "post_worker_init": "runs before lifespan startup (the worker is not ready yet)",
    "when_ready": "the master is ready; no worker is yet (systemd READY=1 waits for one)",
    "keyfile": "passed to uvicorn, as UvicornWorker does",
    "certfile": "passed to uvicorn, as UvicornWorker does",
    "ssl_version": "passed to uvicorn, as UvicornWorker does",
    "cert_reqs": "passed to uvicorn, as UvicornWorker does",
    "ca_certs": "passed to uvicorn, as UvicornWorker does",
    "ciphers": "passed to uvicorn, as UvicornWorker does",
    "backlog": "passed to uvicorn, as UvicornWorker does",
}

# No effect under a uvicorn-based worker: gunicorn's own HTTP parser, WSGI, HTTP/2 and its asgi
# worker's settings. Why, in a few words each.
IGNORED: dict[str, str] = {
    "threads": "one event loop per worker; use --workers",
    "asgi_loop": "gunicorn's `-k asgi` worker only (uvicorn picks uvloop)",
    "asgi_lifespan": "gunicorn's `-k asgi` worker only (lifespan is always on)",
    "asgi_disconnect_grace_period": "gunicorn's `-k asgi` worker only",
    "websocket_max_message_size": "gunicorn's `-k asgi` worker only (uvicorn's default, 16 MiB)",
    "http_parser": "gunicorn's parser; uvicorn parses with httptools (or h11)",
    "sendfile": "WSGI file wrappers only",
    "tmp_upload_dir": "WSGI only",
    "secure_scheme_headers": "gunicorn's parser; the scheme comes from X-Forwarded-Proto of a "
    "trusted proxy (HARDENED_FORWARDED)",
    "paste": "WSGI only",
    "raw_paste_global_conf": "WSGI only",
    "proxy_protocol": "uvicorn does not read the PROXY protocol",
    "proxy_allow_ips": "uvicorn does not read the PROXY protocol",
    "protocol": "uvicorn speaks HTTP only (no uwsgi)",
    "uwsgi_allow_ips": "uvicorn speaks HTTP only (no uwsgi)",
    "permit_obsolete_folding": "gunicorn's parser",
    "strip_header_spaces": "gunicorn's parser",
    "permit_unconventional_http_method": "gunicorn's parser",
    "permit_unconventional_http_version": "gunicorn's parser",
    "casefold_http_method": "gunicorn's parser",
    "forwarder_headers": "gunicorn's parser (its WSGI environ)",
    "header_map": "gunicorn's parser",
    "root_path": "not passed to uvicorn (use the app's root_path, or X-Forwarded-Prefix with "
    "HARDENED_FORWARDED_PREFIX)",
    "pre_request": "WSGI workers only",
    "post_request": "WSGI workers only",
    "ssl_context": "UvicornWorker passes the SSL files, not a context",
    "suppress_ragged_eofs": "not passed to uvicorn",
    "do_handshake_on_connect": "not passed to uvicorn",
    "http_protocols": "uvicorn speaks HTTP/1.1 (and websockets), no HTTP/2",
    "http2_cleartext": "no HTTP/2 under uvicorn",
    "http2_max_concurrent_streams": "no HTTP/2 under uvicorn",
    "http2_initial_window_size": "no HTTP/2 under uvicorn",
    "http2_max_frame_size": "no HTTP/2 under uvicorn",
    "http2_max_header_list_size": "no HTTP/2 under uvicorn",
}


def connection_cap(cfg: Any) -> int | None:
    """``--worker-connections`` when the operator set it; gunicorn's default (1000) applies to its
    own async workers, and enforcing it here would change what an upgrade from UvicornWorker does."""
    setting = cfg.settings["worker_connections"]
    return setting.value if setting.value != setting.default else None


def ignored_and_set(cfg: Any) -> list[str]:
    """The settings in :data:`IGNORED` given a value other than their default, as flags."""
    named = []
    for name in IGNORED:
        setting = cfg.settings.get(name)
        if setting is None or setting.value == setting.default:
            continue
        if name == "http_protocols" and list(setting.value) == ["h1"]:
            continue  # HTTP/1.1 alone is what uvicorn serves anyway
        flag = setting.cli[-1] if setting.cli else name
        named.append(f"{flag} ({IGNORED[name]})")
    return named


def warning(cfg: Any) -> str | None:
    named = ignored_and_set(cfg)
    if not named:
        return None
    return (
        "hardened_worker: gunicorn settings this worker does not use: "
        + "; ".join(named)
        + " (docs/gunicorn-settings.md)"
    )


def meaning(name: str) -> str:
    if name in CHANGED:
        return CHANGED[name]
    if name in IGNORED:
        return "no effect: " + IGNORED[name] + " (named in a warning at start)"
    return AS_GUNICORN


def markdown_table(settings: list[Any]) -> str:
    """``docs/gunicorn-settings.md``'s table, from gunicorn's own list (``KNOWN_SETTINGS``)."""
    rows = ["| gunicorn setting | flag | with hardened_worker.Worker |", "|---|---|---|"]
    for setting in settings:
        flag = f"`{setting.cli[-1]}`" if setting.cli else "-"
        rows.append(f"| `{setting.name}` | {flag} | {meaning(setting.name)} |")
    return "\n".join(rows)
