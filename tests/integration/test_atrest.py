"""
Compression and encryption at rest (persistence.enable_compression,
persistence.enable_encryption; core/atrest.c) against the real rhemad on
SQLite with a keyring under a 0600 master key file: the sessions API works,
the database file holds no plaintext value, records survive a key rotation
and restarts, options turned on or off keep older records readable, and
encryption without key management is refused at startup.
"""

import os
import sqlite3
import struct
import uuid

import pytest

from conftest import PLUGIN_DIR, require_plugin, run_rhemad

TOPIC = "MARKER-atrest-{}-the agents agree on the rollout plan"


def built(kind, name):
    return (PLUGIN_DIR / f"{kind}_{name}.so").exists()


@pytest.fixture(autouse=True)
def plugins_built():
    require_plugin("sqlite")
    for kind, name in (("compress", "zstd"), ("cipher", "xchacha20poly1305")):
        if not built(kind, name):
            pytest.skip(f"{kind} plugin {name} not built")


def config(tmp, compress=True, encrypt=True, keys=True):
    key = tmp / "master.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    km = (f'  key_management: {{ key_file = "{key}"; keyring_path = "{tmp}/keyring";\n'
          f'    backup = {{ directory = "{tmp}/keybackups"; }}; }};\n' if keys else "")
    return ('persistence: {\n  backend = "sqlite";\n'
            f'  sqlite = {{ path = "{tmp}/rhema.db"; }};\n'
            f'  enable_compression = {"true" if compress else "false"};\n'
            f'  enable_encryption = {"true" if encrypt else "false"};\n}};\n'
            'advanced_features: {\n'
            '  compression: { algorithm = "zstd"; threshold_bytes = 64; };\n'
            '  encryption: { algorithm = "xchacha20poly1305"; };\n'
            f'{km}}};\n')


def rows(tmp, ns_prefix="sessions"):
    """{(ns, key): value bytes} of the kv table, read with Python's sqlite3."""
    db = sqlite3.connect(f"file:{tmp}/rhema.db?mode=ro", uri=True)
    try:
        return {(ns, key): bytes(value) for ns, key, value in
                db.execute("SELECT ns, key, value FROM kv WHERE ns LIKE ?", (ns_prefix + "%",))}
    finally:
        db.close()


def files_contain(tmp, needle):
    """True when the database or its WAL holds needle anywhere."""
    for name in ("rhema.db", "rhema.db-wal"):
        p = tmp / name
        if p.exists() and needle.encode() in p.read_bytes():
            return True
    return False


def envelope_version(value):
    assert value[:3] == b"RE\x01", value[:16]
    return struct.unpack("<I", value[4:8])[0]


def make_sessions(d, tag, n=5, messages=2):
    want = {}
    for i in range(n):
        sid = f"s-{tag}-{i}"
        body = {"topic": TOPIC.format(tag) + f" #{i}" * (1 + 250 * (i % 2)),
                "participants": ["alice", "bob"], "status": "Active"}
        st, h, rec = d.json("PUT", f"/v1/sessions/{sid}", body)
        assert st == 201, rec
        for k in range(messages):
            msg = {"id": f"m{k}", "message_type": "note", "sender_id": "alice",
                   "content": f"{TOPIC.format(tag)} message {k}",
                   "timestamp": "2026-03-04T05:06:07Z"}
            st, h, rec = d.json("POST", f"/v1/sessions/{sid}/messages", msg)
            assert st == 201, rec
        st, h, rec = d.json("GET", f"/v1/sessions/{sid}")
        assert st == 200, rec
        want[sid] = rec
    return want


def check_sessions(d, want):
    for sid, rec in want.items():
        st, h, got = d.json("GET", f"/v1/sessions/{sid}")
        assert st == 200, (sid, got)
        assert got["topic"] == rec["topic"] and got["messages"] == rec["messages"]
        assert got["version"] == rec["version"] and h["ETag"] == f'"{rec["version"]}"'
    st, _, page = d.json("GET", "/v1/sessions?participant=bob&limit=1000")
    assert st == 200
    listed = {i["id"] for i in page["items"]}
    assert {s for s, rec in want.items() if "bob" in rec["participants"]} <= listed


def test_sessions_work_and_nothing_is_stored_in_clear(daemons, tmp_path):
    d = daemons(config=config(tmp_path)).start()
    tag = uuid.uuid4().hex[:8]
    want = make_sessions(d, tag)
    check_sessions(d, want)
    # versions and preconditions behave as without the option
    sid, rec = next(iter(want.items()))
    st, _, upd = d.json("PUT", f"/v1/sessions/{sid}", {"topic": "renamed " + TOPIC.format(tag)},
                        headers={"If-Match": f'"{rec["version"]}"'})
    assert st == 200 and upd["version"] > rec["version"], upd
    want[sid] = upd
    st, _, err = d.json("PUT", f"/v1/sessions/{sid}", {"topic": "stale"},
                        headers={"If-Match": f'"{rec["version"]}"'})
    assert st == 412, err
    # the listing shows the real backend, not the wrapper
    st, _, plugins = d.json("GET", "/v1/plugins")
    active = [p for p in plugins["items"] if p["kind"] == "storage" and p.get("active")]
    assert [p["name"] for p in active] == ["sqlite"]
    assert d.stop() == 0

    kv = rows(tmp_path)
    records = {k: v for (ns, k), v in kv.items() if ns == "sessions"}
    assert set(want) <= set(records), records.keys()
    for key, value in records.items():
        assert value[:3] == b"RE\x01", (key, value[:16])
        assert TOPIC.format(tag).encode() not in value
        assert b"topic" not in value and b"alice" not in value
    assert not files_contain(tmp_path, TOPIC.format(tag)), "plaintext topic in the database"
    # the large records were compressed before encryption
    big = records[f"s-{tag}-1"]
    assert len(big) < len(want[f"s-{tag}-1"]["topic"])

    d.start()  # and everything reads after a restart
    check_sessions(d, want)


def test_key_rotation_and_restart(daemons, tmp_path):
    d = daemons(config=config(tmp_path)).start()
    before = make_sessions(d, "before", n=3, messages=1)
    st, _, ks = d.json("POST", "/v1/keys/rotate")
    assert st == 200 and ks["current_version"] == 2, ks
    after = make_sessions(d, "after", n=3, messages=1)
    check_sessions(d, {**before, **after})
    assert d.stop() == 0

    records = {k: v for (ns, k), v in rows(tmp_path).items() if ns == "sessions"}
    assert {envelope_version(records[s]) for s in before} == {1}
    assert {envelope_version(records[s]) for s in after} == {2}

    d.start()
    check_sessions(d, {**before, **after})
    # a record of the old key version can still be updated
    sid = next(iter(before))
    st, _, upd = d.json("PUT", f"/v1/sessions/{sid}", {"topic": "after restart"},
                        headers={"If-Match": f'"{before[sid]["version"]}"'})
    assert st == 200, upd
    assert d.stop() == 0
    assert envelope_version(rows(tmp_path)[("sessions", sid)]) == 2


def test_options_turned_on_and_off_keep_records_readable(daemons, tmp_path):
    # written in clear, before the options
    d = daemons(config=config(tmp_path, compress=False, encrypt=False)).start()
    plain = make_sessions(d, "plain", n=2, messages=1)
    assert d.stop() == 0
    assert rows(tmp_path)[("sessions", "s-plain-0")][:1] == b"{"

    # compression and encryption on: the old records read, new ones are sealed
    d.write_config(config(tmp_path))
    d.start()
    check_sessions(d, plain)
    sealed = make_sessions(d, "sealed", n=2, messages=1)
    assert d.stop() == 0
    assert rows(tmp_path)[("sessions", "s-sealed-0")][:3] == b"RE\x01"

    # compression alone: frames
    d.write_config(config(tmp_path, compress=True, encrypt=False))
    d.start()
    check_sessions(d, {**plain, **sealed})
    framed = make_sessions(d, "framed", n=2, messages=1)
    assert d.stop() == 0
    assert rows(tmp_path)[("sessions", "s-framed-1")][:3] == b"RZ\x01"

    # both off again (key management kept): every record of every form reads
    d.write_config(config(tmp_path, compress=False, encrypt=False))
    d.start()
    check_sessions(d, {**plain, **sealed, **framed})


def test_encryption_without_key_management_is_refused(tmp_path):
    conf = tmp_path / "nokeys.conf"
    conf.write_text(config(tmp_path, keys=False))
    for extra in ([], ["-t"]):
        r = run_rhemad(["-f", "-c", str(conf), "-P", str(PLUGIN_DIR),
                        "-o", "service.listen=127.0.0.1:1"] + extra)
        assert r.returncode != 0, r
        out = r.stdout + r.stderr
        assert "persistence.enable_encryption needs key management" in out, out
        assert "key_file" in out


def test_one_unreadable_record_does_not_fail_the_list(daemons, tmp_path):
    """Issue 17, item 12: the list answers the readable records and names the bad one."""
    d = daemons(config=config(tmp_path)).start()
    want = make_sessions(d, "bad", n=5, messages=1)
    assert d.stop() == 0
    bad = "s-bad-2"
    value = bytearray(rows(tmp_path)[("sessions", bad)])
    value[-1] ^= 0x5A  # the authentication tag no longer matches
    db = sqlite3.connect(str(tmp_path / "rhema.db"))
    try:
        db.execute("UPDATE kv SET value = ? WHERE ns = 'sessions' AND key = ?",
                   (bytes(value), bad))
        db.commit()
    finally:
        db.close()
    d.start()
    good = sorted(s for s in want if s != bad)
    for query in ("", "?participant=alice", "?status=Active", "?status=Active&participant=bob"):
        st, _, page = d.json("GET", f"/v1/sessions{query}")
        assert st == 200, (query, page)
        assert [i["id"] for i in page["items"]] == good, query
        assert page["unreadable"] == [bad], query
    # paged by two: the bad record is named once, on the page whose range holds it
    seen, named, cursor = [], [], None
    for _ in range(10):
        st, _, page = d.json("GET", "/v1/sessions?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert st == 200, page
        seen += [i["id"] for i in page["items"]]
        named += page.get("unreadable", [])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == good and named == [bad]
    # the record itself answers a clear error; the others still read
    st, _, err = d.json("GET", f"/v1/sessions/{bad}")
    assert st >= 500 and "corrupt" in err["error"]["message"].lower(), err
    check_sessions(d, {s: want[s] for s in good})


def corrupt(tmp, ns, key):
    """Flip the last byte of the stored value of (ns, key): its tag no longer matches."""
    db = sqlite3.connect(str(tmp / "rhema.db"))
    try:
        (value,) = db.execute("SELECT value FROM kv WHERE ns = ? AND key = ?", (ns, key)).fetchone()
        value = bytearray(value)
        value[-1] ^= 0x5A
        db.execute("UPDATE kv SET value = ? WHERE ns = ? AND key = ?", (bytes(value), ns, key))
        db.commit()
    finally:
        db.close()


def test_agent_and_service_lists_name_an_unreadable_record(daemons, tmp_path):
    d = daemons(config=config(tmp_path)).start()
    agents = [f"a-{i}" for i in range(4)]
    services = [f"svc-{i}" for i in range(4)]
    for a in agents:
        st, _, rec = d.json("PUT", f"/v1/agents/{a}", {"name": TOPIC.format(a), "agent_type": "coder"})
        assert st == 201, rec
    for s in services:
        st, _, rec = d.json("PUT", f"/v1/services/{s}", {"name": "web", "address": "127.0.0.1:9001"})
        assert st == 201, rec
    assert d.stop() == 0
    corrupt(tmp_path, "agents", "a-1")
    corrupt(tmp_path, "services", "svc-2")
    d.start()
    for path, key, want, bad in (("/v1/agents", "id", agents, "a-1"),
                                 ("/v1/agents?status=Idle", "id", agents, "a-1"),
                                 ("/v1/services", "service_id", services, "svc-2"),
                                 ("/v1/services?name=web", "service_id", services, "svc-2")):
        st, _, page = d.json("GET", path)
        assert st == 200, (path, page)
        assert [i[key] for i in page["items"]] == [x for x in want if x != bad], path
        assert page["unreadable"] == [bad], path
    assert d.json("GET", "/v1/agents/a-1")[0] >= 500
    assert d.json("GET", "/v1/agents/a-0")[0] == 200
