"""Wake sockets only for the pool (issue 25, item 7): another user of the host can neither flood
the workers' wake sockets nor take a future worker's by binding its name first.

The stranger is a real process of another uid (``setpriv`` to ``nobody``) that does what an
attacker would: it reads the names in ``/proc/net/unix``, sends datagrams to every one it sees and
binds the names the next pids would get, ahead of the kernel's last pid. The pool must not notice:
every datagram refused, a worker booted meanwhile has its wake socket, connections still spread.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

STRANGER = """
import json, os, socket, sys, time

def names():  # as listed in /proc/net/unix: the pool under test's only (argv[3])
    return set(json.loads(sys.argv[3]))

def address(name):  # /proc/net/unix shows an abstract name with "@" for its NUL
    return b"\\0" + name[1:].encode() if name.startswith("@") else name

def predicted(name, pid):  # the same pool's name for another pid
    head = name.rsplit("-" if name.startswith("@") else "/", 1)[0]
    return address(head + ("-" if name.startswith("@") else "/") + str(pid))

mode, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
tried = delivered = bound = 0
errors = set()
held = {}
sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sender.setblocking(False)
reported = False
while time.monotonic() < end:
    seen = names()
    if mode == "flood":
        for name in seen:
            for _ in range(50):
                tried += 1
                try:
                    sender.sendto(b"w", address(name))
                    delivered += 1
                except OSError as exc:
                    errors.add(type(exc).__name__)
    else:  # squat: bind the names of the next pids, ahead of the kernel's counter
        last = int(open("/proc/sys/kernel/ns_last_pid").read())
        for name in seen:
            for pid in range(last + 1, last + 40):
                target = predicted(name, pid)
                if target in held:
                    continue
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                tried += 1
                try:
                    s.bind(target)
                    held[target] = s
                    bound += 1
                except OSError as exc:
                    errors.add(type(exc).__name__)
                    s.close()
        if not reported and seen:
            reported = True
            print("squatting", flush=True)
        time.sleep(0.005)
print(json.dumps({"tried": tried, "delivered": delivered, "bound": bound,
                  "names": sorted(names()), "errors": sorted(errors)}), flush=True)
"""


def wake_names(pids: list[int]) -> list[str]:
    """The wake sockets of these workers as /proc/net/unix lists them (what anyone can read),
    found by their inodes: the stranger is aimed at this pool, not at others on the host."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except FileNotFoundError:  # a connection closed meanwhile
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    found = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[6] in inodes and "hardened-worker-wake" in parts[7]:
            found.append(parts[7])
    return found


def stranger(mode: str, seconds: float, names: list[str]) -> subprocess.Popen:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to act as another user"
    assert names, "no wake socket of the pool is listed: nothing to attack"
    return subprocess.Popen(
        [
            setpriv,
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            STRANGER,
            mode,
            str(seconds),
            json.dumps(names),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def held_by(port: int, count: int) -> dict[int, int]:
    """Open ``count`` keep-alive connections one at a time, each answered before the next: the
    workers (woken by each other as counts change) take them in turn."""
    held: dict[int, int] = {}
    conns = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/pid")
        pid = int(conn.getresponse().read())
        held[pid] = held.get(pid, 0) + 1
        conns.append(conn)
    for conn in conns:
        conn.close()
    return held


def test_another_users_datagrams_and_squatted_names_change_nothing(master):
    m = master(workers=2)
    pids = m.wait_workers(2)
    assert set(held_by(m.port, 8).values()) == {4}
    squatter = stranger("squat", 20, wake_names(pids))
    try:
        assert squatter.stdout.readline().strip() == "squatting", squatter.stderr.read()
        m.signal(signal.SIGTTIN)  # a worker booted while the stranger holds what names it can
        pids = m.wait_workers(3)
        flood = stranger("flood", 5, wake_names(pids))
        spread = held_by(m.port, 9)  # while the flood runs
        flooded = report(flood)
    finally:
        squatter.send_signal(signal.SIGKILL)
        squatter.communicate(timeout=30)
    assert "has no wake socket" not in m.log(), m.log()
    assert sorted(spread) == sorted(pids) and set(spread.values()) == {3}, spread
    assert flooded["tried"] > 0 and flooded["delivered"] == 0, flooded
    print(
        f"flood: {flooded['tried']} datagrams at {len(flooded['names'])} sockets, "
        f"{flooded['delivered']} delivered ({', '.join(flooded['errors'])}); spread {spread}"
    )
