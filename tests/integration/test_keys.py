"""
Encryption over HTTP (DESIGN.md §3, §6): POST /v1/messages/encrypt and
/decrypt on raw bytes, and the key manager's /v1/keys endpoints, against the
real rhemad with a keyring under a 0600 master key file.
"""

import os

import pytest

from conftest import PLUGIN_DIR, Daemon, memory_config, sqlite_config, wait_until

CIPHERS = ["xchacha20poly1305", "chacha20poly1305", "aes256gcm"]


def cipher_built(name):
    return (PLUGIN_DIR / f"cipher_{name}.so").exists()


def keyring_config(tmp, cipher="xchacha20poly1305", extra=""):
    key = tmp / "master.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    return (memory_config() +
            f'advanced_features: {{ encryption: {{ algorithm = "{cipher}"; }};\n'
            f'  key_management: {{ key_file = "{key}"; keyring_path = "{tmp}/keyring";\n'
            f'    backup = {{ directory = "{tmp}/keybackups"; }}; {extra} }}; }};\n')


@pytest.fixture(params=[c for c in CIPHERS])
def srv(request, tmp_path):
    if not cipher_built(request.param):
        pytest.skip(f"cipher plugin {request.param} not built")
    d = Daemon(tmp_path, name=f"rhemad-keys-{request.param}",
               config=keyring_config(tmp_path, request.param))
    try:
        d.start()
    except AssertionError as e:
        if request.param == "aes256gcm" and "AES-NI" in str(e):
            pytest.skip("no AES-NI on this CPU")
        raise
    yield d
    d.kill()


def test_encrypt_decrypt_round_trip_and_envelope(srv):
    for data in (b"", b"x", os.urandom(1000), b"{\"k\":\"v\"}" * 500):
        r = srv.request("POST", "/v1/messages/encrypt", data)
        assert r.status == 200, r.body
        env = r.body
        assert env[:2] == b"RE" and env[2] == 1
        assert r.headers.get("X-Rhema-Key-Version") == "1"
        assert len(data) < 8 or data not in env  # a short plaintext may occur by chance
        back = srv.request("POST", "/v1/messages/decrypt", env)
        assert back.status == 200 and back.body == data


def test_every_tampering_and_truncation_is_400(srv):
    env = srv.request("POST", "/v1/messages/encrypt", b"attack at dawn").body
    for i in range(len(env)):
        bad = env[:i] + bytes([env[i] ^ 0x01]) + env[i + 1:]
        r = srv.request("POST", "/v1/messages/decrypt", bad)
        assert r.status == 400, (i, r.status)
        assert r.json()["error"]["code"] == "bad_envelope"
    for cut in (0, 1, 7, 12, len(env) - 1):
        r = srv.request("POST", "/v1/messages/decrypt", env[:cut])
        assert r.status == 400 and r.json()["error"]["message"], cut


def test_rotation_rewrap_and_stats(srv):
    old = srv.request("POST", "/v1/messages/encrypt", b"payload").body
    status, _, st = srv.json("POST", "/v1/keys/rotate")
    assert status == 200 and st["current_version"] == 2
    new = srv.request("POST", "/v1/messages/encrypt", b"payload")
    assert new.headers.get("X-Rhema-Key-Version") == "2"
    # the old version still decrypts
    assert srv.request("POST", "/v1/messages/decrypt", old).body == b"payload"
    r = srv.request("POST", "/v1/keys/rewrap", old)
    assert r.status == 200 and r.headers.get("X-Rhema-Key-Version") == "2"
    assert b"payload" not in r.body
    assert srv.request("POST", "/v1/messages/decrypt", r.body).body == b"payload"
    st = srv.json("GET", "/v1/keys/stats")[2]
    assert st["versions"] == 2 and st["active_keys"] == 2 and st["current_version"] == 2
    assert [v["version"] for v in st["per_version"]] == [1, 2]
    assert st["per_version"][0]["encryptions"] >= 1
    assert st["last_rotation"] is not None


def test_backup_and_restore(srv, tmp_path):
    before = srv.request("POST", "/v1/messages/encrypt", b"keep me").body
    status, _, body = srv.json("POST", "/v1/keys/backup")
    assert status == 200, body
    name = body["name"]
    assert name.startswith("keyring-") and name.endswith(".bak") and "/" not in name
    path = tmp_path / "keybackups" / name
    assert path.exists() and (os.stat(path).st_mode & 0o077) == 0
    assert srv.json("GET", "/v1/keys/stats")[2]["last_backup"] is not None
    # a tampered archive is refused and changes nothing
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xff
    (tmp_path / "keybackups" / "bad.bak").write_bytes(bytes(blob))
    status, _, body = srv.json("POST", "/v1/keys/restore", {"name": "bad.bak"})
    assert status == 400, body
    assert srv.request("POST", "/v1/messages/decrypt", before).body == b"keep me"
    # the good one restores; what it covered still decrypts
    status, _, body = srv.json("POST", "/v1/keys/restore", {"name": name})
    assert status == 200, body
    assert srv.request("POST", "/v1/messages/decrypt", before).body == b"keep me"
    assert srv.json("POST", "/v1/keys/restore", {"nope": 1})[0] == 400
    # a name the client chooses, once
    status, _, body = srv.json("POST", "/v1/keys/backup", {"name": "before-upgrade.bak"})
    assert status == 200 and body == {"name": "before-upgrade.bak"}, body
    first = (tmp_path / "keybackups" / "before-upgrade.bak").read_bytes()
    status, _, body = srv.json("POST", "/v1/keys/backup", {"name": "before-upgrade.bak"})
    assert status == 409 and body["error"]["code"] == "conflict", body
    assert (tmp_path / "keybackups" / "before-upgrade.bak").read_bytes() == first


def test_keyring_survives_restart(srv):
    env = srv.request("POST", "/v1/messages/encrypt", b"durable").body
    srv.json("POST", "/v1/keys/rotate")
    assert srv.stop() == 0
    srv.start()
    assert srv.request("POST", "/v1/messages/decrypt", env).body == b"durable"
    assert srv.json("GET", "/v1/keys/stats")[2]["current_version"] == 2


def test_without_key_management_the_endpoints_say_so(tmp_path):
    d = Daemon(tmp_path, name="rhemad-nokeys", config=memory_config()).start()
    try:
        r = d.request("POST", "/v1/messages/encrypt", b"x")
        assert r.status == 503 and "key_file" in r.json()["error"]["message"]
        assert d.request("GET", "/v1/keys/stats").status == 503
    finally:
        d.kill()


def test_key_file_with_loose_permissions_is_refused(tmp_path):
    key = tmp_path / "master.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o644)
    d = Daemon(tmp_path, name="rhemad-loose", config=keyring_config(tmp_path))
    with pytest.raises(AssertionError) as e:
        d.start(timeout=5)
    assert "0644" in str(e.value) or "mode" in str(e.value)


# ---- issue 16: a client names a file in the backup directory, nothing else ----

def sqlite_keyring_daemon(tmp_path, name="rhemad-keyconfined", extra="", overrides=()):
    """A daemon on the sample's SQLite backend with key management on."""
    if not cipher_built("xchacha20poly1305"):
        pytest.skip("cipher plugin xchacha20poly1305 not built")
    conf = keyring_config(tmp_path, extra=extra).replace(memory_config(), "")
    d = Daemon(tmp_path, name=name, config=sqlite_config(tmp_path / "data" / "rhema.db") + conf,
               overrides=overrides)
    return d.start()


def db_intact(d, db, snapshot):
    """The database file still opens as the daemon's, and the session is there."""
    assert db.read_bytes()[:16] == b"SQLite format 3\x00"
    assert d.json("GET", "/v1/sessions/s1")[0] == 200
    assert d.stop() == 0
    d.start()
    status, _, body = d.json("GET", "/v1/sessions/s1")
    assert status == 200 and body["topic"] == snapshot["topic"], body


def test_backup_cannot_overwrite_the_database(tmp_path):
    d = sqlite_keyring_daemon(tmp_path)
    try:
        db = tmp_path / "data" / "rhema.db"
        status, _, s1 = d.json("PUT", "/v1/sessions/s1", {"topic": "keep", "participants": ["a"]})
        assert status == 201, s1
        # the report of issue 16, word for word
        status, _, body = d.json("POST", "/v1/keys/backup", {"path": str(db)})
        assert status == 400 and "'path'" in body["error"]["message"], body
        hostile = [str(db), "../data/rhema.db", "../../x.bak", "/etc/passwd", "a/b.bak",
                   "sub/../x.bak", "..", ".", ".hidden.bak", "rhema.db",
                   "", "a" * 125 + ".bak", "x.bak ", "x\\\\y.bak", "\u00e9.bak"]
        for name in hostile:
            for route in ("/v1/keys/backup", "/v1/keys/restore"):
                status, _, body = d.json("POST", route, {"name": name})
                assert status == 400, (route, name, body)
                assert body["error"]["code"] == "invalid_field", body
                assert "'name'" in body["error"]["message"], body
        # a NUL never reaches the name check: the JSON parser refuses it
        status, _, body = d.json("POST", "/v1/keys/backup", {"name": "x.bak\u0000.txt"})
        assert status == 400 and body["error"]["code"] == "bad_json", body
        for bad in ({"name": 5}, {"name": None}, ["x.bak"], {"name": "x.bak", "path": "/tmp/x"},
                    {"name": "x.bak", "other": 1}):
            assert d.json("POST", "/v1/keys/backup", bad)[0] == 400, bad
        assert d.request("POST", "/v1/keys/backup", b"{not json").status == 400
        kb = tmp_path / "keybackups"
        assert not kb.exists() or not list(kb.iterdir()), list(kb.iterdir())
        db_intact(d, db, s1)
    finally:
        d.kill()


def test_symlink_in_backup_directory_is_not_followed(tmp_path):
    d = sqlite_keyring_daemon(tmp_path)
    try:
        db = tmp_path / "data" / "rhema.db"
        status, _, s1 = d.json("PUT", "/v1/sessions/s1", {"topic": "keep", "participants": ["a"]})
        assert status == 201
        kb = tmp_path / "keybackups"
        kb.mkdir(exist_ok=True)
        outside = tmp_path / "outside"
        outside.mkdir()
        victim = outside / "victim.bak"
        victim.write_bytes(b"operator data")
        (kb / "evil.bak").symlink_to(victim)
        (kb / "db.bak").symlink_to(db)
        (kb / "dangling.bak").symlink_to(outside / "new.bak")
        for name in ("evil.bak", "db.bak", "dangling.bak"):
            status, _, body = d.json("POST", "/v1/keys/backup", {"name": name})
            assert status == 409, (name, body)
        assert victim.read_bytes() == b"operator data"
        assert not (outside / "new.bak").exists()
        # a real backup outside the directory, reached through a link: refused
        status, _, good = d.json("POST", "/v1/keys/backup", {"name": "good.bak"})
        assert status == 200, good
        os.replace(kb / "good.bak", outside / "good.bak")
        (kb / "linked.bak").symlink_to(outside / "good.bak")
        status, _, body = d.json("POST", "/v1/keys/restore", {"name": "linked.bak"})
        assert status == 400 and body["error"]["code"] == "bad_backup", body
        # the temp file a backup writes cannot be a link either
        (kb / "t.bak.tmp").symlink_to(victim)
        status, _, body = d.json("POST", "/v1/keys/backup", {"name": "t.bak"})
        assert status == 200, body
        assert victim.read_bytes() == b"operator data"
        assert (kb / "t.bak").is_file() and not (kb / "t.bak").is_symlink()
        db_intact(d, db, s1)
    finally:
        d.kill()


def test_restore_answers_the_same_for_missing_and_corrupt(tmp_path):
    d = sqlite_keyring_daemon(tmp_path)
    try:
        kb = tmp_path / "keybackups"
        status, _, body = d.json("POST", "/v1/keys/backup", {"name": "real.bak"})
        assert status == 200
        blob = bytearray((kb / "real.bak").read_bytes())
        blob[-3] ^= 1
        (kb / "corrupt.bak").write_bytes(bytes(blob))
        (kb / "keyring-of-itself.bak").write_bytes((tmp_path / "keyring").read_bytes())
        (kb / "dir.bak").mkdir()
        os.mkfifo(kb / "fifo.bak")
        (kb / "empty.bak").write_bytes(b"")
        answers = {}
        for name in ("missing.bak", "corrupt.bak", "keyring-of-itself.bak", "dir.bak",
                     "fifo.bak", "empty.bak"):
            r = d.request("POST", "/v1/keys/restore", {"name": name})
            answers[name] = (r.status, r.body.decode().replace(name, "NAME"))
        assert len(set(answers.values())) == 1, answers
        status, body = answers["missing.bak"]
        assert status == 400 and '"bad_backup"' in body, body
        # the daemon's log keeps the real reason for the operator
        assert "no such file" in d.log() and "does not authenticate" in d.log()
        # and the real one still restores
        assert d.json("POST", "/v1/keys/restore", {"name": "real.bak"})[0] == 200
    finally:
        d.kill()


def test_scheduled_backups_catch_up_and_prune(tmp_path):
    """
    backup.enabled with old automatic backups in the directory: the first
    scheduled backup comes a few seconds after the start (they are overdue),
    and pruning keeps retention_count automatic backups, never the ones a
    client named.
    """
    kb = tmp_path / "keybackups"
    kb.mkdir()
    old = ["keyring-20200101T000000-000Z.bak", "keyring-20210101T000000-000Z.bak",
           "keyring-20220101T000000-000Z.bak", "keyring-20230101T000000-000Z.bak",
           "keyring-20230101T000000-000Z-2.bak"]
    for n in old:
        (kb / n).write_bytes(b"old")
    (kb / "named-by-a-client.bak").write_bytes(b"keep")
    (kb / "notes.txt").write_bytes(b"keep")
    d = sqlite_keyring_daemon(tmp_path, extra="",
                              overrides=["advanced_features.key_management.backup.enabled=true",
                                         "advanced_features.key_management.backup.retention_count=3"])
    try:

        def new():
            return sorted(set(p.name for p in kb.glob("keyring-*.bak")) - set(old))
        assert wait_until(new, 20), sorted(p.name for p in kb.iterdir())
        assert wait_until(lambda: "pruned" in d.log(), 5), d.log()
        autos = sorted(p.name for p in kb.glob("keyring-*.bak"))
        assert len(new()) == 1 and new()[0].startswith("keyring-20"), new()
        assert autos == sorted(old[3:] + new()), autos
        assert (kb / "named-by-a-client.bak").read_bytes() == b"keep"
        assert (kb / "notes.txt").read_bytes() == b"keep"
        # the new one is a real backup of this keyring
        assert d.json("POST", "/v1/keys/restore", {"name": new()[0]})[0] == 200
    finally:
        d.kill()


def test_restoring_an_older_backup_keeps_later_key_versions(srv, tmp_path):
    """Issue 17 item 12: what later versions encrypted stays readable."""
    v1 = srv.request("POST", "/v1/messages/encrypt", b"under v1").body
    assert srv.json("POST", "/v1/keys/backup", {"name": "old.bak"})[0] == 200
    assert srv.json("POST", "/v1/keys/rotate")[0] == 200
    v2 = srv.request("POST", "/v1/messages/encrypt", b"under v2")
    assert v2.headers.get("X-Rhema-Key-Version") == "2"
    status, _, st = srv.json("POST", "/v1/keys/restore", {"name": "old.bak"})
    assert status == 200, st
    assert [v["version"] for v in st["per_version"]] == [1, 2, 3]
    assert srv.request("POST", "/v1/messages/decrypt", v1).body == b"under v1"
    assert srv.request("POST", "/v1/messages/decrypt", v2.body).body == b"under v2"
    assert srv.request("POST", "/v1/messages/encrypt", b"x").headers.get(
        "X-Rhema-Key-Version") == "3"
