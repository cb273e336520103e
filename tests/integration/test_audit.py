"""
The audit log (security.audit, issue 9 item 5) from a running daemon:
tampering found by `rhemactl audit verify`, fail_closed refusing a write
it cannot record, SIGUSR1 reopening the logs with the chain continued
(issue 18 item 7).
"""

import json
import os
import signal
import subprocess

import pytest

from conftest import TOP_BUILDDIR, memory_config, wait_until

RHEMACTL = TOP_BUILDDIR / "rhemactl"
SESSION = {"topic": "audit me", "participants": ["alice"]}


def ctl(*args, timeout=60):
    return subprocess.run([str(RHEMACTL), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def audited(daemons, tmp_path, *extra, name="rhemad"):
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir(exist_ok=True)
    d = daemons(name=name, overrides=["security.audit.enabled=true",
                                      f"security.audit.file={log}", *extra])
    return d, log


def lines_of(path):
    return path.read_bytes().splitlines(keepends=True)


def records(path):
    return [json.loads(l) for l in lines_of(path)]


def verify(*files):
    r = ctl("audit", "verify", *files)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture
def stopped_log(daemons, tmp_path):
    """A real log: a start, writes, reads, errors, a stop."""
    d, log = audited(daemons, tmp_path)
    d.start()
    assert d.json("PUT", "/v1/sessions/s1", SESSION)[0] in (200, 201)
    assert d.json("GET", "/v1/sessions/s1")[0] == 200
    assert d.json("GET", "/v1/sessions/nope")[0] == 404
    assert d.json("PUT", "/v1/sessions/s2", {"topic": 5})[0] == 400
    assert d.json("DELETE", "/v1/sessions/s1")[0] in (200, 204)
    assert d.request("GET", "/no/such/route").status == 404
    assert d.stop() == 0
    return log


def test_records_name_the_request_not_its_secrets(stopped_log):
    recs = records(stopped_log)
    assert recs[0]["event"] == "audit.opened" and recs[0]["seq"] == 1
    assert recs[-1]["event"] == "audit.closed"
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    puts = [r for r in recs if r.get("method") == "PUT"]
    # a write: a durable begin record before its handler, then its outcome
    assert [r["phase"] for r in puts[:2]] == ["begin", "end"]
    assert puts[0]["outcome"] == "pending" and puts[1]["status"] in (200, 201)
    assert puts[1]["route"] == "/v1/sessions/{id}"
    assert puts[1]["bytes_in"] == len(json.dumps(SESSION))
    assert puts[1]["client"].startswith("127.0.0.1:")
    assert puts[1]["key_id"] is None and puts[1]["roles"] == []
    bad = [r for r in recs if r.get("phase") == "end" and r.get("status") == 400]
    assert bad and bad[0]["outcome"] == "rejected"
    unrouted = [r for r in recs if r.get("type") == "request" and r["route"] is None]
    assert unrouted and unrouted[0]["status"] == 404
    text = stopped_log.read_text()
    # ids and bodies only as HMACs
    assert "s1" not in text and "audit me" not in text and "alice" not in text
    assert puts[1]["param"].startswith("hmac-sha256:")
    key = stopped_log.with_name("audit.log.key")
    r = ctl("audit", "hmac", "--key-file", key, "s1")
    assert r.returncode == 0 and r.stdout.strip() == puts[1]["param"]
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_intact_log_verifies(stopped_log):
    rc, out = verify(stopped_log)
    assert rc == 0, out
    assert "intact" in out


def write_lines(path, lines):
    path.write_bytes(b"".join(lines))


def expect_broken(path, line, *words):
    rc, out = verify(path)
    assert rc == 1, out
    assert f"{path}:{line}: broken" in out, out
    for w in words:
        assert w in out, out


def test_edited_line_named(stopped_log):
    lines = lines_of(stopped_log)
    rec = json.loads(lines[3])
    lines[3] = lines[3].replace(b'"client":"127.0.0.1', b'"client":"127.0.0.2')
    assert lines[3] != lines_of(stopped_log)[3], rec
    write_lines(stopped_log, lines)
    expect_broken(stopped_log, 4, "edited")


def test_edited_line_with_its_hash_recomputed_breaks_the_next(stopped_log):
    import hashlib
    lines = lines_of(stopped_log)
    body = lines[2].rstrip(b"\n")
    cut = body.rindex(b',"hash":"')
    forged = body[:cut].replace(b'"method":"', b'"method":"X', 1)
    lines[2] = forged + b',"hash":"' + hashlib.sha256(forged).hexdigest().encode() + b'"}\n'
    write_lines(stopped_log, lines)
    expect_broken(stopped_log, 4, "prev")


def test_deleted_line_named(stopped_log):
    lines = lines_of(stopped_log)
    del lines[4]
    write_lines(stopped_log, lines)
    expect_broken(stopped_log, 5, "deleted")


def test_deleted_first_line_named(stopped_log):
    write_lines(stopped_log, lines_of(stopped_log)[1:])
    expect_broken(stopped_log, 1, "audit.opened")


def test_reordered_lines_named(stopped_log):
    lines = lines_of(stopped_log)
    lines[5], lines[6] = lines[6], lines[5]
    write_lines(stopped_log, lines)
    expect_broken(stopped_log, 6)


def test_truncated_line_named(stopped_log):
    lines = lines_of(stopped_log)
    cut = lines[:6] + [lines[6][: len(lines[6]) // 2]]
    write_lines(stopped_log, cut)
    expect_broken(stopped_log, 7, "cut")


def test_truncated_rotated_file_named(stopped_log, tmp_path):
    """Lines cut from the end of a file that another follows."""
    lines = lines_of(stopped_log)
    older = tmp_path / "older.log"
    newer = tmp_path / "newer.log"
    write_lines(older, lines[:5])
    write_lines(newer, lines[5:])
    rc, out = verify(older, newer)
    assert rc == 1 and f"{older}:5: broken" in out and "audit.closed" in out, out


def test_fail_closed_refuses_a_write_it_cannot_record(daemons, tmp_path):
    d, log = audited(daemons, tmp_path)
    d.start()
    assert d.json("PUT", "/v1/sessions/kept", SESSION)[0] in (200, 201)
    # the log's place becomes a directory: the reopen fails, nothing can be written
    os.rename(log, log.with_name("audit.log.1"))
    log.mkdir()
    mark = d.log_size()
    d.send(signal.SIGUSR1)
    assert d.wait_log("refusing requests (fail_closed)", since=mark), d.log()
    st, _, body = d.json("PUT", "/v1/sessions/lost", SESSION)
    assert st == 503 and body["error"]["code"] == "audit_unavailable", body
    assert d.json("GET", "/v1/sessions/kept")[0] == 503  # reads refused too
    assert d.running()
    # the file can be made again: the daemon recovers by itself
    log.rmdir()
    assert wait_until(lambda: d.json("GET", "/v1/sessions/kept")[0] == 200, 10), d.log()
    assert d.json("GET", "/v1/sessions/lost")[0] == 404  # the refused write did not happen
    assert d.stop() == 0
    rc, out = verify(log.with_name("audit.log.1"), log)
    assert rc == 0, out
    first = records(log)[0]
    assert first["event"] == "audit.opened" and first["detail"]["reason"] == "recovered"
    assert records(log.with_name("audit.log.1"))[-1]["detail"]["reason"] == "reopen failed"


def test_fail_open_serves_and_writes_on(daemons, tmp_path):
    d, log = audited(daemons, tmp_path, "security.audit.fail_closed=false")
    d.start()
    os.rename(log, log.with_name("audit.log.1"))
    log.mkdir()
    mark = d.log_size()
    d.send(signal.SIGUSR1)
    assert d.wait_log("writing on to the old file", since=mark), d.log()
    assert d.json("PUT", "/v1/sessions/s", SESSION)[0] in (200, 201)
    assert d.stop() == 0
    recs = records(log.with_name("audit.log.1"))
    assert any(r.get("event") == "audit.reopen_failed" for r in recs)
    assert any(r.get("method") == "PUT" and r.get("phase") == "end" for r in recs)


def test_sigusr1_reopens_both_logs_and_the_chain_continues(daemons, tmp_path):
    applog = tmp_path / "rhemad-app.log"
    d, log = audited(daemons, tmp_path, f"logging.file={applog}")
    d.start()
    assert d.json("PUT", "/v1/sessions/a", SESSION)[0] in (200, 201)
    os.rename(log, log.with_name("audit.log.1"))
    os.rename(applog, applog.with_name("rhemad-app.log.1"))
    d.send(signal.SIGUSR1)
    assert wait_until(lambda: log.exists() and applog.exists(), 10)
    assert d.json("GET", "/v1/sessions/a")[0] == 200
    assert d.running()
    assert wait_until(lambda: b"GET" in log.read_bytes(), 10)
    rc, out = verify(log.with_name("audit.log.1"), log)
    assert rc == 0, out
    assert "intact" in out
    # the old file ends with the close record, the new one links to it
    old, new = records(log.with_name("audit.log.1")), records(log)
    assert old[-1]["event"] == "audit.closed" and new[0]["prev"] == old[-1]["hash"]
    assert "reopened" in applog.read_text()
    assert d.stop() == 0


def test_sigusr1_without_audit_keeps_the_daemon(daemons, tmp_path):
    applog = tmp_path / "plain.log"
    d = daemons(overrides=[f"logging.file={applog}"]).start()
    os.rename(applog, applog.with_name("plain.log.1"))
    d.send(signal.SIGUSR1)
    assert wait_until(lambda: applog.exists(), 10)
    assert d.json("GET", "/health/live")[0] == 200
    assert d.stop() == 0


def test_restart_continues_the_chain(daemons, tmp_path):
    d, log = audited(daemons, tmp_path)
    d.start()
    assert d.stop() == 0
    d.start()
    assert d.json("GET", "/health/live")[0] == 200
    assert d.stop() == 0
    rc, out = verify(log)
    assert rc == 0, out
    assert [r.get("event") for r in records(log)].count("audit.opened") == 2


def test_start_refused_when_the_last_line_was_edited(daemons, tmp_path):
    d, log = audited(daemons, tmp_path)
    d.start()
    assert d.stop() == 0
    lines = lines_of(log)
    lines[-1] = lines[-1].replace(b'"shutdown"', b'"shutdowN"')
    write_lines(log, lines)
    d.spawn()
    assert d.wait(10) == 1
    assert "does not verify" in d.log()


def test_admin_events_recorded(daemons, tmp_path):
    d, log = audited(daemons, tmp_path)
    d.start()
    d.send(signal.SIGHUP)
    assert wait_until(lambda: b"config.reloaded" in log.read_bytes(), 10), d.log()
    assert "security.audit changed" not in d.log()  # the same settings: nothing to restart
    assert d.stop() == 0
    ev = [r for r in records(log) if r.get("event") == "config.reloaded"]
    assert ev and ev[0]["detail"]["file"].endswith("rhemad.conf")


def test_keyring_events_recorded(daemons, tmp_path):
    from conftest import PLUGIN_DIR
    if not (PLUGIN_DIR / "cipher_xchacha20poly1305.so").exists():
        pytest.skip("cipher plugin xchacha20poly1305 not built")
    key = tmp_path / "master.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = (memory_config() +
              'advanced_features: { encryption: { algorithm = "xchacha20poly1305"; };\n'
              f'  key_management: {{ key_file = "{key}"; keyring_path = "{tmp_path}/keyring";\n'
              f'    backup = {{ directory = "{tmp_path}/keybackups"; }}; }}; }};\n')
    log = tmp_path / "audit.log"
    d = daemons(config=config, overrides=["security.audit.enabled=true",
                                          f"security.audit.file={log}"]).start()
    st, _, rot = d.json("POST", "/v1/keys/rotate")
    assert st == 200, rot
    st, _, bak = d.json("POST", "/v1/keys/backup", {"name": "k1.bak"})
    assert st == 200, bak
    st, _, res = d.json("POST", "/v1/keys/restore", {"name": "k1.bak"})
    assert st == 200, res
    assert d.stop() == 0
    recs = records(log)
    events = {r["event"]: r for r in recs if r["type"] == "event"}
    for name in ("keyring.rotated", "keyring.backed_up", "keyring.restored"):
        assert name in events, [r.get("event") for r in recs]
    # tied to the request that caused it, whose begin record comes first
    rotated = events["keyring.rotated"]
    begin = [r for r in recs if r.get("request_id") == rotated["request_id"]
             and r.get("phase") == "begin"]
    assert begin and begin[0]["seq"] < rotated["seq"]
    assert begin[0]["route"] == "/v1/keys/rotate"
    assert events["keyring.backed_up"]["detail"] == {"trigger": "request", "name": "k1.bak"}
    assert verify(log)[0] == 0


def test_batching_settings_keep_the_chain(daemons, tmp_path):
    """One record per batch, a batch delay, no fsync: the same records, in order."""
    d, log = audited(daemons, tmp_path, "security.audit.fsync=false",
                     "security.audit.batch_max_records=1", "security.audit.batch_delay_ms=5")
    d.start()
    for i in range(5):
        assert d.json("PUT", f"/v1/sessions/b{i}", SESSION)[0] in (200, 201)
    assert d.stop() == 0
    recs = records(log)
    puts = [r for r in recs if r.get("method") == "PUT"]
    assert [r["phase"] for r in puts] == ["begin", "end"] * 5
    assert verify(log)[0] == 0


def test_bad_audit_settings_refused(tmp_path):
    from conftest import PLUGIN_DIR, free_port, run_rhemad
    r = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", "security.audit.batch_max_records=0"], cwd=tmp_path)
    assert r.returncode == 1
    assert "security.audit.batch_max_records' must be between 1 and 1000000" in r.stderr
    # an audit file whose directory does not exist stops startup, with the reason
    r = run_rhemad(["-f", "-P", str(PLUGIN_DIR), "-o", "persistence.backend=memory",
                    "-o", f"service.listen=127.0.0.1:{free_port()}", "-o", "security.audit.enabled=true",
                    "-o", f"security.audit.file={tmp_path}/nodir/audit.log"], cwd=tmp_path)
    assert r.returncode == 1
    assert "nodir/audit.log" in r.stderr + r.stdout


def test_leadership_events_recorded(daemons, tmp_path):
    from conftest import require_plugin, sqlite_config
    require_plugin("sqlite")
    log = tmp_path / "audit.log"
    d = daemons("leader", config=sqlite_config(tmp_path / "cluster.db"),
                overrides=["distributed.enabled=true",
                           "distributed.cluster.leader_lease_seconds=3",
                           "distributed.cluster.heartbeat_interval_seconds=1",
                           "distributed.cluster.node_timeout_seconds=3",
                           "distributed.node.node_id=solo",
                           "security.audit.enabled=true", f"security.audit.file={log}"]).start()
    assert wait_until(lambda: b"cluster.leadership_gained" in log.read_bytes(), 10), d.log()
    assert d.stop() == 0
    ev = [r for r in records(log) if r.get("event", "").startswith("cluster.")]
    assert [e["event"] for e in ev] == ["cluster.leadership_gained", "cluster.leadership_lost"]
    assert ev[0]["detail"]["node"] == "solo" and ev[0]["detail"]["epoch"] >= 1
    assert ev[1]["detail"]["reason"] == "the node is leaving"
    assert verify(log)[0] == 0


def test_group_committed_writes_after_their_begin_record(daemons, tmp_path):
    """sqlite: a session write is set aside twice (audit, then the committer)."""
    from conftest import require_plugin, sqlite_config
    require_plugin("sqlite")
    log = tmp_path / "audit.log"
    d = daemons(config=sqlite_config(tmp_path / "s.db"),
                overrides=["security.audit.enabled=true", f"security.audit.file={log}"]).start()
    conns = [d.connection() for _ in range(4)]
    try:
        for i in range(20):
            st, h, _ = d.json("PUT", f"/v1/sessions/g{i}", SESSION, conn=conns[i % 4])
            assert st == 201
        st, h, _ = d.json("GET", "/v1/sessions/g3")
        assert st == 200
        st, _, body = d.json("PUT", "/v1/sessions/g3", SESSION, headers={"If-Match": '"999"'})
        assert st == 412, body
        assert d.json("DELETE", "/v1/sessions/g4")[0] in (200, 204)
        assert d.json("GET", "/v1/sessions/g4")[0] == 404
    finally:
        for c in conns:
            c.close()
    assert d.stop() == 0
    recs = records(log)
    writes = [r for r in recs if r.get("method") in ("PUT", "DELETE")]
    by_id = {}
    for r in writes:
        by_id.setdefault(r["request_id"], []).append(r)
    assert len(by_id) == 22
    for rid, rs in by_id.items():
        assert [r["phase"] for r in rs] == ["begin", "end"], rs
        assert rs[0]["seq"] < rs[1]["seq"]
    assert sorted(r["status"] for r in writes if r["phase"] == "end").count(201) == 20
    assert verify(log)[0] == 0


def test_reload_with_changed_audit_settings_says_restart(daemons, tmp_path):
    d, log = audited(daemons, tmp_path)
    d.start()
    mark = d.log_size()
    d.write_config(memory_config() + "security: { audit: { fsync = false; }; };\n")
    d.send(signal.SIGHUP)
    assert d.wait_log("security.audit changed; restart to apply", since=mark), d.log()
    assert d.stop() == 0


def test_records_name_the_key_and_its_roles(daemons, tmp_path):
    # the authenticate stage's principal reaches the audit log: a refused
    # key is recorded too, and creating or revoking a key is an event
    out = ctl("auth", "new-key", "--name", "ops", "--roles", "admin").stdout.splitlines()
    key, group = out[0], out[1]
    log = tmp_path / "logs" / "audit.log"
    log.parent.mkdir()
    d = daemons(config=memory_config()
                + "security: {\n  api_keys: { enabled = true; keys = (\n    " + group
                + "\n  ); };\n  roles = ( { name = \"admin\"; permissions = [ \"*\" ]; } );\n"
                + f'  audit: {{ enabled = true; file = "{log}"; }};\n}};\n')
    d.start()
    admin = {"Authorization": f"Bearer {key}"}
    assert d.request("GET", "/v1/sessions").status == 401
    st, _, body = d.json("POST", "/v1/auth/keys", {"name": "worker", "roles": ["admin"]}, admin)
    assert st == 201, body
    assert d.request("DELETE", f"/v1/auth/keys/{body['id']}", headers=admin).status == 204
    assert d.stop() == 0
    assert verify(log)[0] == 0
    recs = records(log)
    key_id = key.split("_")[1]
    refused = [r for r in recs if r.get("phase") == "end" and r.get("status") == 401]
    assert refused and refused[0]["key_id"] is None, refused
    made = [r for r in recs if r.get("phase") == "end" and r.get("method") == "POST"]
    assert made and made[0]["key_id"] == key_id and made[0]["roles"] == ["admin"], made
    events = {r.get("event"): r for r in recs}
    assert events["auth.key_created"]["key_id"] == key_id
    assert events["auth.key_revoked"]["key_id"] == key_id
    assert body["key"] not in log.read_text()
