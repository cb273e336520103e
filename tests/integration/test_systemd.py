"""
systemd integration (issue 13 items 2 and 3): this test plays systemd.

- The notify protocol (sd_notify(3)): a unix datagram socket is handed to
  rhemad as $NOTIFY_SOCKET (a path, and an @abstract name); the messages and
  their order are checked through start (READY=1 once it serves), SIGHUP
  (RELOADING=1 with MONOTONIC_USEC, then READY=1), watchdog pings at half of
  $WATCHDOG_USEC, and SIGTERM (STOPPING=1).
- journald: with $JOURNAL_STREAM naming rhemad's stderr (device:inode), each
  line starts with its syslog priority "<N>" instead of a timestamp.
- etc/rhemad.service passes `systemd-analyze verify` where systemd-analyze
  exists.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Daemon, free_port, wait_until

SRC = Path(os.environ.get("top_srcdir", Path(__file__).resolve().parents[2]))
TIMEOUT = 15


class FakeSystemd:
    """A notify socket; collects each datagram as a dict of its KEY=value lines."""

    def __init__(self, tmp_path, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"rhema-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(tmp_path / "notify.sock")
            self.sock.bind(self.address)
        self.messages = []

    def poll(self, timeout=0.2):
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(4096).decode()
                self.messages.append(dict(l.split("=", 1) for l in data.splitlines() if l))
                self.sock.settimeout(0.01)
        except (socket.timeout, BlockingIOError):
            pass

    def wait_for(self, pred, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.messages):
                return True
            self.poll()
        return pred(self.messages)

    def keys(self):
        """The messages as a list of their main key, WATCHDOG pings left out."""
        out = []
        for m in self.messages:
            for k in ("READY", "RELOADING", "STOPPING"):
                if k in m:
                    out.append(k)
                    break
        return out

    def close(self):
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request, tmp_path):
    s = FakeSystemd(tmp_path, abstract=request.param == "abstract")
    yield s
    s.close()


def test_notify_start_reload_watchdog_stop(systemd, tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    d = Daemon(tmp_path)
    try:
        d.start()
        assert systemd.wait_for(lambda ms: any("READY" in m for m in ms)), systemd.messages
        ready = next(m for m in systemd.messages if "READY" in m)
        assert ready["READY"] == "1"
        assert f"127.0.0.1:{d.port}" in ready["STATUS"]
        assert "MAINPID" not in ready  # -f: the pid systemd started is rhemad
        # READY comes once rhemad serves: nothing before it but pings
        assert systemd.keys()[0] == "READY"
        # the watchdog: pings keep coming while it runs
        n = len(systemd.messages)
        assert systemd.wait_for(
            lambda ms: sum(1 for m in ms[n:] if m.get("WATCHDOG") == "1") >= 3), systemd.messages

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.send(signal.SIGHUP)
        assert systemd.wait_for(lambda ms: systemd.keys()[-2:] == ["RELOADING", "READY"]), \
            systemd.messages
        rel = next(m for m in systemd.messages if "RELOADING" in m)
        assert rel["RELOADING"] == "1"
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert before <= int(rel["MONOTONIC_USEC"]) <= after
        assert "reloaded" in systemd.messages[-1]["STATUS"] or \
            any("reloaded" in m.get("STATUS", "") for m in systemd.messages if "READY" in m)

        assert d.stop() == 0
        systemd.poll()
        assert systemd.keys() == ["READY", "RELOADING", "READY", "STOPPING"], systemd.messages
        stop = next(m for m in systemd.messages if "STOPPING" in m)
        assert stop["STOPPING"] == "1" and "draining" in stop["STATUS"]
        # no ping after STOPPING
        i = systemd.messages.index(stop)
        assert not any("WATCHDOG" in m for m in systemd.messages[i + 1:]), systemd.messages
    finally:
        d.kill()


def test_reload_refused_still_ready(tmp_path, monkeypatch):
    s = FakeSystemd(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", s.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    d = Daemon(tmp_path)
    try:
        d.start()
        assert s.wait_for(lambda ms: s.keys() == ["READY"])
        d.write_config("service: { nosuchkey = 1; };\n")
        d.send(signal.SIGHUP)
        assert s.wait_for(lambda ms: s.keys() == ["READY", "RELOADING", "READY"]), s.messages
        assert "refused" in s.messages[-1]["STATUS"]
        assert not any("WATCHDOG" in m for m in s.messages)  # no WATCHDOG_USEC: no pings
        assert d.stop() == 0
    finally:
        d.kill()
        s.close()


def test_watchdog_for_another_pid_is_ignored(tmp_path, monkeypatch):
    s = FakeSystemd(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", s.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # not rhemad: sd_watchdog_enabled(3) says ignore
    d = Daemon(tmp_path)
    try:
        d.start()
        assert s.wait_for(lambda ms: s.keys() == ["READY"])
        assert d.stop() == 0
        s.poll()
        assert s.keys() == ["READY", "STOPPING"]
        assert not any("WATCHDOG" in m for m in s.messages), s.messages
    finally:
        d.kill()
        s.close()


def test_daemonized_sends_mainpid(tmp_path, monkeypatch):
    s = FakeSystemd(tmp_path)
    monkeypatch.setenv("NOTIFY_SOCKET", s.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    d = Daemon(tmp_path)
    d.port = free_port()
    pidfile = tmp_path / "rhemad.pid"
    cmd = [a for a in d.command() if a != "-f"] + ["-p", str(pidfile)]
    r = subprocess.run(cmd, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=TIMEOUT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text())
    try:
        assert s.wait_for(lambda ms: s.keys() == ["READY"]), s.messages
        assert int(s.messages[0]["MAINPID"]) == pid
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), 10)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ---- journald ----

def start_with_journal(tmp_path, monkeypatch, match):
    """rhemad with stderr on its log file, and JOURNAL_STREAM naming it (or not)."""
    d = Daemon(tmp_path)
    d.logfile.touch()
    st = os.stat(d.logfile)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + (0 if match else 1)}")
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    return d.start()


def test_journal_stream_lines_carry_syslog_priority(tmp_path, monkeypatch):
    d = start_with_journal(tmp_path, monkeypatch, True)
    try:
        d.request("GET", "/v1/sessions/nosuch")  # an access line: info
        d.send(signal.SIGHUP)
        assert wait_until(lambda: "reload: configuration re-read" in d.log(), 10)
        d.write_config("service: { nosuchkey = 1; };\n")
        d.send(signal.SIGHUP)
        assert wait_until(lambda: "configuration refused" in d.log(), 10)
        assert d.stop() == 0
        lines = [l for l in d.log().splitlines() if l]
        assert lines
        for l in lines:
            # "<N>" and then the level, module and message: no timestamp
            if not l.startswith(" ") and not l.startswith("\t") and l[:1] == "<":
                assert re.match(r"^<[3-7]>\[(error|warn|notice|info|debug)\] ", l), l
        started = next(l for l in lines if "started (pid" in l)
        assert started.startswith("<5>[notice] main: rhemad ")
        assert any(l.startswith("<6>[info] access: ") for l in lines), lines
        assert any(l.startswith("<3>[error] main: reload: configuration refused") for l in lines)
        assert not any(re.match(r"^\d{4}-\d\d-\d\dT", l) for l in lines), lines
    finally:
        d.kill()


def test_journal_stream_of_another_file_keeps_timestamps(tmp_path, monkeypatch):
    d = start_with_journal(tmp_path, monkeypatch, False)
    try:
        assert d.stop() == 0
        started = next(l for l in d.log().splitlines() if "started (pid" in l)
        assert re.match(r"^\d{4}-\d\d-\d\dT\S+ \[notice\] main: rhemad ", started), started
    finally:
        d.kill()


def test_journal_stream_json_lines(tmp_path, monkeypatch):
    d = Daemon(tmp_path, overrides=["logging.format=json"])
    d.logfile.touch()
    st = os.stat(d.logfile)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    d.start()
    try:
        assert d.stop() == 0
        started = next(l for l in d.log().splitlines() if "started (pid" in l)
        assert started.startswith('<5>{"time":'), started
    finally:
        d.kill()


# ---- the unit file ----

def test_unit_file_verifies(tmp_path):
    build = Path(os.environ.get("top_builddir", SRC))
    unit = build / "etc" / "rhemad.service"  # made by make from etc/rhemad.service.in
    text = unit.read_text()
    for want in ("Type=notify", "WatchdogSec=", "ProtectSystem=strict", "ProtectHome=yes",
                 "PrivateTmp=yes", "NoNewPrivileges=yes", "User=rhema",
                 "ExecReload=/bin/kill -HUP $MAINPID"):
        assert f"\n{want}" in text, want
    rw = re.search(r"^ReadWritePaths=(.*)$", text, re.M).group(1).split()
    assert [p.rsplit("/", 2)[-2:] for p in rw] == [["lib", "rhema"], ["log", "rhema"]], rw
    assert "@" not in re.sub(r"^#.*$", "", text, flags=re.M)  # every @var@ replaced
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: a copy names this build's rhemad
    copy = tmp_path / "rhemad.service"
    copy.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={build / 'rhemad'}", text, flags=re.M))
    r = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True,
                       text=True, timeout=120)
    out = r.stdout + r.stderr
    # systemd-analyze may also speak of the host's own units: only this one's lines count
    ours = [l for l in out.splitlines() if "rhemad.service" in l]
    assert r.returncode == 0 and not ours, out
