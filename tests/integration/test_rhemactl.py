"""
rhemactl's offline administration: Shamir shares of the master key
(keys split / recover), keyring backup verification and restore, and zstd
dictionary training, end to end with the real binaries.
"""

import itertools
import json
import os
import struct
import subprocess

import pytest

from conftest import PLUGIN_DIR, TOP_BUILDDIR, Daemon, memory_config

RHEMACTL = TOP_BUILDDIR / "rhemactl"

# configure's answer (Makefile.am exports it): keys split/recover need libgfshare
HAVE_GFSHARE = os.environ.get("RHEMA_HAVE_GFSHARE", "yes") != "no"
needs_gfshare = pytest.mark.skipif(not HAVE_GFSHARE,
                                   reason="rhema was configured without libgfshare")


def ctl(*args, stdin=None, timeout=60):
    return subprocess.run([str(RHEMACTL), *map(str, args)], input=stdin, capture_output=True,
                          timeout=timeout)


@pytest.fixture
def master(tmp_path):
    key = tmp_path / "master.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    return key


def split(master, n, k):
    r = ctl("keys", "split", "--shares", n, "--threshold", k,
            "-o", f"advanced_features.key_management.key_file={master}")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split()
    assert len(lines) == n and all(l.startswith("rhema-share-v1:") for l in lines)
    return lines


def recover(tmp_path, shares, name="out.key"):
    out = tmp_path / name
    if out.exists():
        out.unlink()
    r = ctl("keys", "recover", "--out", out, stdin="\n".join(shares).encode())
    return r, out


@needs_gfshare
def test_any_k_shares_rebuild_the_master(master, tmp_path):
    shares = split(master, 5, 3)
    for combo in itertools.combinations(shares, 3):
        r, out = recover(tmp_path, combo)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == master.read_bytes()
        assert (out.stat().st_mode & 0o077) == 0
    r, out = recover(tmp_path, shares)  # all five work too
    assert r.returncode == 0 and out.read_bytes() == master.read_bytes()


@needs_gfshare
def test_fewer_or_bad_shares_are_refused(master, tmp_path):
    shares = split(master, 5, 3)
    r, out = recover(tmp_path, shares[:2])
    assert r.returncode != 0 and b"needs 3" in r.stderr and not out.exists()
    # one character of a share changed: its check catches it
    s = shares[2]
    i = s.index(":", len("rhema-share-v1:") + 25) + 3
    damaged = s[:i] + ("0" if s[i] != "0" else "1") + s[i + 1:]
    r, out = recover(tmp_path, [shares[0], shares[1], damaged])
    assert r.returncode != 0 and b"damaged" in r.stderr and not out.exists()
    # shares of another split of the same key do not mix
    other = split(master, 5, 3)
    r, out = recover(tmp_path, [shares[0], shares[1], other[2]])
    assert r.returncode != 0 and b"another split" in r.stderr and not out.exists()
    # the same share twice is not two shares
    r, out = recover(tmp_path, [shares[0], shares[0], shares[1]])
    assert r.returncode != 0 and not out.exists()
    # an existing file is not overwritten without --force
    out = tmp_path / "exists.key"
    out.write_bytes(b"keep")
    r = ctl("keys", "recover", "--out", out, stdin="\n".join(shares[:3]).encode())
    assert r.returncode != 0 and out.read_bytes() == b"keep"


@pytest.mark.skipif(HAVE_GFSHARE, reason="rhema was configured with libgfshare")
@pytest.mark.parametrize("sub", ["split", "recover"])
def test_keys_shares_without_libgfshare_say_so(master, tmp_path, sub):
    args = (["--shares", 3, "--threshold", 2,
             "-o", f"advanced_features.key_management.key_file={master}"] if sub == "split"
            else ["--out", tmp_path / "out.key"])
    r = ctl("keys", sub, *args, stdin=b"")
    assert r.returncode == 1, r.stderr
    assert b"built without libgfshare" in r.stderr, r.stderr
    assert not (tmp_path / "out.key").exists()


def test_keyring_backup_verify_and_offline_restore(master, tmp_path):
    if not (PLUGIN_DIR / "cipher_xchacha20poly1305.so").exists():
        pytest.skip("cipher plugin not built")
    conf = (memory_config() +
            'advanced_features: { key_management: {\n'
            f'  key_file = "{master}"; keyring_path = "{tmp_path}/keyring";\n'
            f'  backup = {{ directory = "{tmp_path}"; }}; }}; }};\n')
    d = Daemon(tmp_path, name="rhemad-ctl-keys", config=conf).start()
    env = d.request("POST", "/v1/messages/encrypt", b"secret").body
    status, _, body = d.json("POST", "/v1/keys/backup", {"name": "k.bak"})
    assert status == 200, body
    opts = ["-o", f"advanced_features.key_management.key_file={master}",
            "-o", f"advanced_features.key_management.keyring_path={tmp_path}/keyring"]
    r = ctl("keys", "verify", tmp_path / "k.bak", *opts)
    assert r.returncode == 0 and b"verified" in r.stdout, r.stderr
    # restore is refused while rhemad holds the keyring
    r = ctl("keys", "restore", tmp_path / "k.bak", *opts)
    assert r.returncode != 0
    assert d.stop() == 0
    # a tampered archive is refused and the keyring file is unchanged
    before = (tmp_path / "keyring").read_bytes()
    blob = bytearray((tmp_path / "k.bak").read_bytes())
    blob[-5] ^= 1
    (tmp_path / "bad.bak").write_bytes(bytes(blob))
    r = ctl("keys", "restore", tmp_path / "bad.bak", *opts)
    assert r.returncode != 0 and (tmp_path / "keyring").read_bytes() == before
    r = ctl("keys", "restore", tmp_path / "k.bak", *opts)
    assert r.returncode == 0, r.stderr
    d.start()
    assert d.request("POST", "/v1/messages/decrypt", env).body == b"secret"
    d.kill()


def test_dictionary_training_and_use(tmp_path):
    if not (PLUGIN_DIR / "compress_zstd.so").exists():
        pytest.skip("zstd plugin not built")
    r = ctl("dict", "--help")
    if b"usage" not in r.stderr:
        pytest.skip("rhemactl built without zstd")
    msgs = [json.dumps({"id": f"m-{i}", "message_type": "StatusUpdate", "priority": "Normal",
                        "sender_id": f"agent-{i % 7}", "recipient_ids": [f"agent-{i % 5}"],
                        "content": f"finished step {i} of plan {i % 13}"})
            for i in range(400)]
    (tmp_path / "samples.txt").write_text("\n".join(msgs) + "\n")
    r = ctl("dict", "train", "--out", tmp_path / "d.dict", "--lines", tmp_path / "samples.txt")
    assert r.returncode == 0, r.stderr
    dict_id = int(r.stdout.split(b" id ")[1].split(b",")[0])
    base = memory_config() + 'plugins: { load = ( "memory", "zstd" ); };\n'
    with_dict = base + ('advanced_features: { compression: { threshold_bytes = 0;\n'
                        f'  zstd = {{ dictionary = "{tmp_path}/d.dict"; }}; }}; }};\n')
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d = Daemon(tmp_path / "a", name="rhemad-dict", config=with_dict).start()
    plain = Daemon(tmp_path / "b", name="rhemad-nodict", config=base).start()
    try:
        msg = msgs[3].encode()
        r = d.request("POST", "/v1/messages/compress?algorithm=zstd", msg)
        assert r.status == 200
        frame = r.body
        assert frame[4] & 1, "the frame carries a dictionary id"
        assert struct.unpack("<I", frame[13:17])[0] == dict_id
        assert d.request("POST", "/v1/messages/decompress", frame).body == msg
        r2 = plain.request("POST", "/v1/messages/compress?algorithm=zstd", msg)
        assert len(frame) < len(r2.body), "the dictionary pays on a small message"
        r = plain.request("POST", "/v1/messages/decompress", frame)
        assert r.status == 400 and "dictionary" in r.json()["error"]["message"]
    finally:
        d.kill()
        plain.kill()


# ---- plugin check on every kind ----

@pytest.mark.parametrize("so", ["balancer_round_robin", "balancer_ip_hash", "compress_lz4",
                                "cipher_chacha20poly1305", "storage_memory"])
def test_plugin_check_runs_the_kinds_suite(so):
    path = PLUGIN_DIR / f"{so}.so"
    if not path.exists():
        pytest.skip(f"{so} not built")
    r = ctl("plugin", "check", path, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, (out, r.stderr)
    last = out.strip().splitlines()[-1]
    assert last.endswith("0 failed, 0 skipped") or ", 0 failed," in last, out
    assert int(last.split()[0]) >= 5, out


def test_plugin_check_fails_on_a_bad_balancer_group():
    path = PLUGIN_DIR / "balancer_ip_hash.so"
    if not path.exists():
        pytest.skip("ip_hash not built")
    r = ctl("plugin", "check", path, "-o", "distributed.load_balancing.ip_hash.table_size=3")
    out = r.stdout.decode()
    assert r.returncode == 1, out
    assert "FAIL" in out and "table_size" in out, out
