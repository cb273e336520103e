"""
rhemad as an operator runs it (DESIGN.md §1, §8): -t, flags, overrides,
signals, graceful drain, reload, JSON logs, daemon mode and pidfile, bind
failures, and restart durability on SQLite.
"""

import json
import os
import random
import signal
import socket
import time
import uuid

import pytest

from conftest import (PLUGIN_DIR, TOP_SRCDIR, Daemon, free_port, memory_config,
                      pid_alive, require_plugin, run_rhemad, sqlite_config, wait_until)


def write(path, text):
    path.write_text(text)
    return str(path)


# ---- -t, -V, -h, bad flags ----

def test_t_good_config_exits_0(tmp_path):
    conf = write(tmp_path / "good.conf",
                 'service: {\n  listen = "127.0.0.1:8080";\n  workers = 2;\n};\n'
                 + memory_config())
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stdout
    assert conf in r.stdout


def test_t_sample_config_runs_as_it_is(tmp_path):
    """etc/rhemad.conf is a valid configuration (SQLite under ./data)."""
    require_plugin("sqlite")
    sample = TOP_SRCDIR / "etc" / "rhemad.conf"
    r = run_rhemad(["-t", "-c", str(sample), "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stdout


def test_t_unknown_key_names_file_and_line(tmp_path):
    conf = write(tmp_path / "bad.conf",
                 'service: {\n  workers = 1;\n  bogus_key = 3;\n};\n' + memory_config())
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 1
    assert f"{conf}:3:" in r.stderr, r.stderr
    assert "bogus_key" in r.stderr
    assert "test is successful" not in r.stdout


@pytest.mark.parametrize("group,needle", [
    ("ip_hash = { table_size = 3; };", "table_size"),
    ("least_connections = { choices = 0; };", "choices"),
    ("round_robin = { no_such_key = 1; };", "no_such_key"),
])
def test_t_checks_balancer_groups(tmp_path, group, needle):
    """-t fails on a balancing strategy's bad group, as the start would."""
    body = "distributed: {\n  load_balancing: {\n    " + group + "\n  };\n};\n"
    conf = write(tmp_path / "lb.conf", body + memory_config())
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert needle in r.stderr and "test failed" in r.stderr, r.stderr
    assert f"{conf}:3" in r.stderr, r.stderr
    ok = write(tmp_path / "lb-ok.conf", "distributed: {\n  load_balancing: {\n"
               "    ip_hash = { table_size = 4096; };\n  };\n};\n" + memory_config())
    r = run_rhemad(["-t", "-c", ok, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_t_unknown_backend_names_plugin(tmp_path):
    conf = write(tmp_path / "nosuch.conf", 'persistence: { backend = "nosuch"; };\n')
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 1
    assert "nosuch" in r.stderr, r.stderr


def test_t_sqlite_key_the_plugin_does_not_read(tmp_path):
    """-t creates nothing, so it does not open a durable backend (opening SQLite
    creates its file), but the plugin's check() reads the group: the key it does
    not read stops -t and the start alike, with its file:line."""
    require_plugin("sqlite")
    conf = write(tmp_path / "sq.conf",
                 'persistence: {\n  backend = "sqlite";\n  sqlite = {\n'
                 f'    path = "{tmp_path}/t.db";\n    pathh = "x";\n  }};\n}};\n')
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert f"{conf}:5: unknown key 'persistence.sqlite.pathh'" in r.stderr, r.stderr
    assert not (tmp_path / "t.db").exists()
    r = run_rhemad(["-f", "-c", conf, "-P", str(PLUGIN_DIR), "-o", f"service.listen=127.0.0.1:{free_port()}"],
                   cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert f"{conf}:5:" in r.stderr, r.stderr
    assert "pathh" in r.stderr


def test_t_memory_group_key_the_plugin_does_not_read(tmp_path):
    conf = write(tmp_path / "mm.conf",
                 'persistence: {\n  backend = "memory";\n  memory = {\n    size = 1;\n  };\n};\n')
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode == 1
    assert f"{conf}:4:" in r.stderr, r.stderr


def test_t_refuses_a_setting_not_implemented(tmp_path):
    """A setting that would change behaviour, but does nothing in this version, stops -t."""
    key = "monitoring.sample_interval_seconds"
    conf = write(tmp_path / "sec.conf",
                 'monitoring: {\n  enabled = true;\n  sample_interval_seconds = 5;\n};\n'
                 + memory_config())
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR)], cwd=tmp_path)
    assert r.returncode != 0, r.stdout
    assert f"{conf}:3: {key}: not implemented in this version" in r.stderr, r.stderr
    assert "test is successful" not in r.stdout
    r = run_rhemad(["-t", "-c", conf, "-P", str(PLUGIN_DIR), "-o", f"{key}=10"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", f"{key}=5"], cwd=tmp_path)
    assert r.returncode != 0, r.stdout
    assert f"-o {key}=5: {key}: not implemented" in r.stderr, r.stderr


def test_t_with_bad_override_names_it(tmp_path):
    r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", "service.workers=lots"], cwd=tmp_path)
    assert r.returncode == 1
    assert "service.workers" in r.stderr, r.stderr


def test_version_and_help_exit_0():
    r = run_rhemad(["-V"])
    assert r.returncode == 0 and "rhemad" in r.stdout
    r = run_rhemad(["-h"])
    assert r.returncode == 0 and "usage" in r.stdout.lower()


@pytest.mark.parametrize("args", [["-Z"], ["-c"], ["extra-argument"], ["-o", "no-equals"]],
                         ids=["unknown flag", "missing argument", "stray argument",
                              "bad -o"])
def test_bad_command_line_exits_nonzero(args):
    r = run_rhemad(args)
    assert r.returncode != 0
    assert r.stderr.strip(), "no message on stderr"


# ---- overrides ----

def test_o_overrides_file_values(daemons):
    other = free_port()
    d = daemons(config=f'service: {{ listen = "127.0.0.1:{other}"; }};\n'
                       'logging: { level = "warn"; };\n' + memory_config(),
                overrides=["logging.level=info"]).start()
    assert d.port != other
    assert d.request("GET", "/health/live").status == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other), timeout=2).close()
    assert f"127.0.0.1:{d.port}" in d.log()
    rid = f"ovr-{uuid.uuid4().hex[:8]}"
    d.request("GET", "/health/live", headers={"X-Request-Id": rid})
    assert d.wait_log(rid), "logging.level=info from -o did not override the file's warn"


# ---- signals ----

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(daemon, sig):
    assert daemon.request("PUT", "/v1/sessions/a", {"topic": "t"}).status == 201
    rc = daemon.stop(sig, timeout=10)
    assert rc == 0, daemon.log()
    assert "stopped" in daemon.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", daemon.port), timeout=2).close()


def test_sigterm_as_soon_as_listening_still_drains(daemons):
    """Signals are handled from the moment the port accepts (no default-action kill)."""
    d = daemons(workers=4)
    for i in range(10):
        d.spawn()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", d.port), timeout=1).close()
                break
            except OSError:
                assert d.running() and time.monotonic() < deadline, d.log()
        d.send(signal.SIGTERM)
        rc = d.wait(10)
        assert rc == 0, f"round {i}: exit {rc}; log:\n{d.log()}"
    assert d.log().count("stopped") == 10


def _read_response(sock, timeout=10):
    """Read one HTTP/1.1 response with Content-Length; returns (status, headers, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before the headers: {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError(f"connection closed after {len(body)} of {length} body bytes")
        body += chunk
    return status, headers, body


def test_sigterm_completes_an_answered_reply(daemons):
    """A reply being sent when SIGTERM arrives is sent in full; then rhemad exits 0."""
    d = daemons().start()
    big = {"topic": "big", "decisions": [{"blob": "x" * (6 << 20)}]}
    st, _, rec = d.json("PUT", "/v1/sessions/big", big)
    assert st == 201
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the reply cannot be sent at once
    s.connect(("127.0.0.1", d.port))
    try:
        s.sendall(b"GET /v1/sessions/big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        d.send(signal.SIGTERM)
        time.sleep(0.3)
        assert d.running(), "rhemad exited with a reply still unsent"
        status, headers, body = _read_response(s)
    finally:
        s.close()
    assert status == 200
    got = json.loads(body)
    assert got["decisions"] == big["decisions"] and got["version"] == rec["version"]
    assert d.wait(10) == 0, d.log()
    assert "stopped" in d.log()


def test_sigterm_drains_a_request_in_progress(daemons):
    """A request whose body is still arriving at SIGTERM is served, then rhemad exits 0."""
    d = daemons().start()
    body = json.dumps({"topic": "slow", "decisions": [{"pad": "p" * 4000}]}).encode()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    try:
        s.sendall(b"PUT /v1/sessions/slow HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body[:len(body) // 2])
        time.sleep(0.3)
        d.send(signal.SIGTERM)
        time.sleep(0.3)
        try:
            s.sendall(body[len(body) // 2:])
            status, _, reply = _read_response(s)
        except OSError as e:
            raise AssertionError(f"connection dropped during the drain: {e}")
    finally:
        s.close()
    assert status == 201, reply
    assert json.loads(reply)["topic"] == "slow"
    assert d.wait(10) == 0, d.log()


def test_sigterm_with_idle_keepalive_connection_exits_promptly(daemons):
    d = daemons().start()
    c = d.connection()
    try:
        assert d.request("GET", "/health/live", conn=c).status == 200
        t0 = time.monotonic()
        rc = d.stop(signal.SIGTERM, timeout=10)
        assert rc == 0
        assert time.monotonic() - t0 < 5, "an idle keep-alive connection held up the stop"
    finally:
        c.close()


# ---- SIGHUP reload ----

def _reload_config(level, workers):
    return (f'service: {{ workers = {workers}; }};\n'
            f'logging: {{ level = "{level}"; }};\n' + memory_config())


def test_sighup_applies_new_log_level(daemons):
    d = daemons(config=_reload_config("info", 2), workers=None).start()
    before = f"before-{uuid.uuid4().hex[:8]}"
    d.request("GET", "/health/live", headers={"X-Request-Id": before})
    assert d.wait_log(before), "no access line at level info"
    mark = d.log_size()
    # workers changes too: its "restart to apply" warning shows the reload happened
    d.write_config(_reload_config("warn", 3))
    d.send(signal.SIGHUP)
    assert d.wait_log("service.workers", since=mark), d.log()[mark:]
    after = f"after-{uuid.uuid4().hex[:8]}"
    assert d.request("GET", "/health/live", headers={"X-Request-Id": after}).status == 200
    time.sleep(0.2)
    assert after not in d.log(), "access line logged at level warn after the reload"
    # and back
    mark = d.log_size()
    d.write_config(_reload_config("info", 2))
    d.send(signal.SIGHUP)
    assert d.wait_log("re-read", since=mark), d.log()[mark:]
    again = f"again-{uuid.uuid4().hex[:8]}"
    d.request("GET", "/health/live", headers={"X-Request-Id": again})
    assert d.wait_log(again, since=mark)
    assert d.stop() == 0


def test_sighup_with_broken_config_keeps_running(daemons):
    d = daemons(config=_reload_config("info", 2), workers=None).start()
    assert d.request("PUT", "/v1/sessions/keep", {"topic": "t"}).status == 201
    mark = d.log_size()
    d.write_config('service: { workers = 2;\n  bogus = ;\n')  # syntax error
    d.send(signal.SIGHUP)
    assert d.wait_log("error", since=mark), d.log()[mark:]
    assert "refused" in d.log()[mark:] or "keeping" in d.log()[mark:]
    assert d.running()
    assert d.request("GET", "/v1/sessions/keep").status == 200
    # an unknown key is refused too, naming file:line
    mark = d.log_size()
    d.write_config('service: { workers = 2; };\nlogging: { level = "warn"; nope = 1; };\n'
                   + memory_config())
    d.send(signal.SIGHUP)
    assert d.wait_log(f"{d.conf}:2:", since=mark), d.log()[mark:]
    # the old level still holds: access lines continue
    rid = f"still-{uuid.uuid4().hex[:8]}"
    assert d.request("GET", "/health/live", headers={"X-Request-Id": rid}).status == 200
    assert d.wait_log(rid, since=mark), "a refused reload changed the log level"
    assert d.stop() == 0


# ---- logging ----

# raw bytes in the request line (evhttp logs the URI as it came)
HOSTILE_PATHS = [
    b"/v1/sessions/a\x1b[31mRED\x1b[0m\rforged\x08\x08",                # ESC, CR, BS
    b'/v1/sessions/"%20200%200%20quote\\',                               # quote, backslash
    b"/v1/sessions/\xff\xfe\xc3\x7f\x01",                              # not UTF-8, DEL
    b"/v1/sessions/" + "\u20ac".encode() * 2000 + b"\xc3",             # 6 KB of euro signs
    b"/v1/nosuch?" + b"q=%01" * 900,                                      # a long query
]


def _raw_get(d, path):
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass


def test_access_log_text_lines_cannot_be_forged(daemons):
    """Issue 17 item 17: URI bytes never reach the text log as control codes."""
    d = daemons(overrides=["logging.access_log=true"]).start()
    mark = d.log_size()
    for p in HOSTILE_PATHS:
        _raw_get(d, p)
    assert d.wait_log("quote", since=mark)
    assert d.stop() == 0
    raw = d.logfile.read_bytes()[mark:]
    for b in (b"\x1b", b"\x7f", b"\x01", b"\r", b"\x08", b"\xff"):
        assert b not in raw, b
    lines = raw.decode("utf-8").splitlines()
    forged = [ln for ln in lines if "forged" in ln]
    assert len(forged) == 1 and "\\x1B[31m" in forged[0] and "\\x0D" in forged[0], forged
    assert any('"GET /v1/sessions/\\x22%20200%200%20quote\\x5C"' in ln for ln in lines), lines
    assert any("\u20ac" * 100 in ln for ln in lines), "UTF-8 is kept in text logs"


def test_json_log_lines_stay_json_whatever_the_uri(daemons):
    """Issue 17 item 17: long or non-UTF-8 URIs used to cut JSON lines in half."""
    d = daemons(overrides=["logging.format=json", "logging.access_log=true"]).start()
    for p in HOSTILE_PATHS:
        _raw_get(d, p)
    assert d.stop() == 0
    access = []
    for ln in d.log().splitlines():
        if ln.strip():
            rec = json.loads(ln)  # every line, however long its URI
            if rec.get("module") == "access":
                access.append(rec)
    assert len(access) >= len(HOSTILE_PATHS), access
    assert any(r["uri"].endswith("...") for r in access), [len(r["uri"]) for r in access]
    assert any("\ufffd" in r["uri"] for r in access)
    assert all(len(json.dumps(r)) < 8192 for r in access)



def test_json_log_format(daemons):
    d = daemons(overrides=["logging.format=json"]).start()
    rid = f"json-{uuid.uuid4().hex[:8]}"
    d.request("GET", "/v1/sessions/none", headers={"X-Request-Id": rid})
    assert d.wait_log(rid)
    assert d.stop() == 0
    lines = [ln for ln in d.log().splitlines() if ln.strip()]
    assert lines
    records = []
    for ln in lines:
        try:
            records.append(json.loads(ln))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {ln!r}")
    access = [r for r in records if r.get("request_id") == rid]
    assert len(access) == 1, records
    assert access[0]["status"] == 404 and access[0]["level"] == "info"
    assert any("stopped" in r.get("msg", "") for r in records)
    for r in records:
        assert "time" in r and "level" in r


# ---- daemon mode, pidfile ----

def _daemon_mode(tmp_path, port, pidfile, logfile, timeout=15):
    conf = write(tmp_path / "dm.conf", memory_config())
    return run_rhemad(["-c", conf, "-P", str(PLUGIN_DIR), "-p", str(pidfile),
                       "-o", f"service.listen=127.0.0.1:{port}", "-o", "service.workers=1",
                       "-o", f"logging.file={logfile}"], timeout=timeout, cwd=tmp_path)


def test_daemon_mode_pidfile(tmp_path, daemons):
    pidfile, logfile = tmp_path / "rhemad.pid", tmp_path / "dm.log"
    port = free_port()
    r = _daemon_mode(tmp_path, port, pidfile, logfile)
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text().strip())
    daemons.pids.append(pid)
    assert pid_alive(pid)
    client = Daemon(tmp_path, name="client", port=port)
    assert client.request("GET", "/health/live").status == 200
    assert client.request("PUT", "/v1/sessions/dm", {"topic": "t"}).status == 201

    # a second daemon on the same pidfile refuses to start and leaves it alone
    r2 = _daemon_mode(tmp_path, free_port(), pidfile, logfile)
    assert r2.returncode != 0
    said = r2.stderr + logfile.read_text()
    assert "already running" in said or str(pidfile) in said, said
    assert int(pidfile.read_text().strip()) == pid
    assert pid_alive(pid)
    assert client.request("GET", "/v1/sessions/dm").status == 200

    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not pid_alive(pid), 10), "daemon did not exit on SIGTERM"
    assert wait_until(lambda: not pidfile.exists(), 5), "pidfile left behind"
    assert "stopped" in logfile.read_text()


def test_pidfile_never_follows_a_link_nor_lives_in_an_open_directory(tmp_path):
    """Issue 17 item 18: a pidfile symlink would have rhemad truncate its target."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "rhemad.pid"
    link.symlink_to(victim)
    r = run_rhemad(["-f", "-c", "/dev/null", "-P", str(PLUGIN_DIR), "-p", str(link),
                    "-o", "persistence.backend=memory", "-o", f"service.listen=127.0.0.1:{free_port()}"],
                   timeout=15, cwd=tmp_path)
    assert r.returncode != 0
    assert "pidfile" in r.stderr, r.stderr
    assert victim.read_text() == "precious\n"
    # a directory everyone may write to, without the sticky bit
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    r = run_rhemad(["-f", "-c", "/dev/null", "-P", str(PLUGIN_DIR), "-p", str(open_dir / "r.pid"),
                    "-o", "persistence.backend=memory", "-o", f"service.listen=127.0.0.1:{free_port()}"],
                   timeout=15, cwd=tmp_path)
    assert r.returncode != 0 and "writable by everyone" in r.stderr, r.stderr
    assert not (open_dir / "r.pid").exists()


def test_daemon_mode_startup_failure_is_reported_by_the_launcher(tmp_path):
    """The launcher exits non-zero when the daemon cannot start (port in use)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = _daemon_mode(tmp_path, port, tmp_path / "x.pid", tmp_path / "x.log")
    assert r.returncode != 0
    assert not (tmp_path / "x.pid").exists() or not (tmp_path / "x.pid").read_text().strip()


def test_cannot_bind_exits_nonzero_with_clear_message(daemons):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        d = daemons(port=port)
        d.spawn()
        rc = d.wait(10)
    assert rc is not None and rc != 0, d.log()
    log = d.log()
    assert f"127.0.0.1:{port}" in log
    assert "Address already in use" in log, log
    assert "service.listen" in log, f"the message does not name the setting: {log}"


# ---- restart durability on SQLite ----

def _workload(d, n=200, seed=1):
    """
    Create n sessions; update some, add messages to some, delete some.
    Returns {id: record fields or None (deleted)} from acknowledged replies only.
    """
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:6]
    want = {}
    conns = [d.connection(), d.connection()]
    try:
        ids = [f"dur-{tag}-{i:03d}" for i in range(n)]
        for i, sid in enumerate(ids):
            body = {"topic": f"topic {i}", "participants": [f"p{i % 7}", "all"],
                    "status": rng.choice(["Active", "Paused", "Completed"])}
            st, h, rec = d.json("PUT", f"/v1/sessions/{sid}", body, conn=conns[i % 2])
            assert st == 201, rec
            want[sid] = rec
        for i, sid in enumerate(ids):
            c = conns[i % 2]
            if i % 3 == 0:
                st, h, rec = d.json("PUT", f"/v1/sessions/{sid}",
                                    {"topic": f"updated {i}", "participants": ["all"],
                                     "status": "Cancelled"},
                                    headers={"If-Match": f'"{want[sid]["version"]}"'}, conn=c)
                assert st == 200, rec
                want[sid] = rec
            if i % 5 == 0:
                for k in range(2):
                    msg = {"id": f"m{k}", "message_type": "note", "sender_id": "p0",
                           "content": f"message {k} of {sid}",
                           "timestamp": "2026-03-04T05:06:07Z"}
                    st, h, rec = d.json("POST", f"/v1/sessions/{sid}/messages", msg, conn=c)
                    assert st == 201, rec
                # an append answers the message; the acknowledged record is read back
                st, h, rec = d.json("GET", f"/v1/sessions/{sid}", conn=c)
                assert st == 200 and len(rec["messages"]) == 2, rec
                want[sid] = rec
            if i % 7 == 3:
                r = d.request("DELETE", f"/v1/sessions/{sid}", conn=c)
                assert r.status == 204
                want[sid] = None
    finally:
        for c in conns:
            c.close()
    return {k: (strip(v) if v else None) for k, v in want.items()}


def strip(rec):
    return {k: v for k, v in rec.items() if k not in ("access_count", "last_accessed")}


def _check_state(d, want):
    c = d.connection()
    try:
        for sid, rec in want.items():
            st, h, got = d.json("GET", f"/v1/sessions/{sid}", conn=c)
            if rec is None:
                assert st == 404, f"deleted session {sid} came back: {got}"
            else:
                assert st == 200, f"acknowledged session {sid} lost: {st} {got}"
                assert strip(got) == rec, f"{sid} differs after restart"
                assert h["ETag"] == f'"{rec["version"]}"'
        live = sorted(k for k, v in want.items() if v is not None)
        prefix = live[0].rsplit("-", 1)[0]
        st, _, page = d.json("GET", "/v1/sessions?participant=all&limit=1000", conn=c)
        listed = sorted(i["id"] for i in page["items"] if i["id"].startswith(prefix))
        assert listed == live, "the participant index disagrees with the records"
    finally:
        c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_sqlite_restart_keeps_every_acknowledged_write(daemons, tmp_path, sig):
    require_plugin("sqlite")
    db = tmp_path / "r.db"
    d = daemons(config=sqlite_config(db)).start()
    want = _workload(d)
    assert sum(v is None for v in want.values()) > 0 and sum(v is not None for v in want.values())
    if sig == signal.SIGKILL:
        d.kill()  # right after the last acknowledged write: a crash, no shutdown
        assert d.proc.returncode == -signal.SIGKILL
    else:
        assert d.stop(sig) == 0
    d.start()
    _check_state(d, want)
    # versions go on from where they were: an If-Match on the old version works
    sid, rec = next((k, v) for k, v in want.items() if v is not None)
    st, _, upd = d.json("PUT", f"/v1/sessions/{sid}", {"topic": "after restart"},
                        headers={"If-Match": f'"{rec["version"]}"'})
    assert st == 200 and upd["version"] > rec["version"], upd
    assert d.stop() == 0


# ---- error bodies are JSON, whatever bytes the request carried ----

def test_bad_utf8_in_path_is_a_json_404(daemon):
    """GET /v1/nosuch%FF: 404 with a body that parses (it was a 500 "out of memory")."""
    r = daemon.request("GET", "/v1/nosuch%FF")
    assert r.status == 404, r.body
    assert r.headers.get("Content-Type") == "application/json"
    err = json.loads(r.body.decode("utf-8"))["error"]
    assert err["code"] == "not_found"
    assert err["message"] == "no route for /v1/nosuch\ufffd", err


def test_long_path_error_is_cut_between_characters(daemon):
    """A message longer than the buffer keeps whole characters: the body still parses."""
    for pad in range(3):
        r = daemon.request("GET", "/v1/nosuch/" + "x" * pad + "%E2%82%AC" * 600)
        assert r.status == 404, r.body
        msg = json.loads(r.body.decode("utf-8"))["error"]["message"]
        assert msg.startswith("no route for /v1/nosuch/" + "x" * pad + "\u20ac")
        assert set(msg[len("no route for /v1/nosuch/") + pad:]) == {"\u20ac"}, msg[-20:]
