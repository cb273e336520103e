"""
Encryption over HTTP (DESIGN.md §3, §6): POST /v1/messages/encrypt and
/decrypt on raw bytes, and the key manager's /v1/keys endpoints, against the
real rhemad with a keyring under a 0600 master key file.
"""

import os

import pytest

from conftest import PLUGIN_DIR, Daemon, memory_config

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
    path = body["path"]
    assert os.path.exists(path) and (os.stat(path).st_mode & 0o077) == 0
    assert srv.json("GET", "/v1/keys/stats")[2]["last_backup"] is not None
    # a tampered archive is refused and changes nothing
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2] ^= 0xff
    bad = tmp_path / "bad.bak"
    bad.write_bytes(bytes(blob))
    status, _, body = srv.json("POST", "/v1/keys/restore", {"path": str(bad)})
    assert status == 400, body
    assert srv.request("POST", "/v1/messages/decrypt", before).body == b"keep me"
    # the good one restores; what it covered still decrypts
    status, _, body = srv.json("POST", "/v1/keys/restore", {"path": path})
    assert status == 200, body
    assert srv.request("POST", "/v1/messages/decrypt", before).body == b"keep me"
    assert srv.json("POST", "/v1/keys/restore", {"nope": 1})[0] == 400


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
