"""
rhemactl against a running rhemad (issue 13 items 4 and 5): every remote
command's exit status (0 ok, 1 error, 2 usage, 3 not found), its JSON output
compared with what the API answers, the table output, --key / RHEMA_API_KEY
against a daemon with API keys on, RHEMA_ADDR; and `keys init`, whose file
rhemad accepts as its master key.
"""

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import TOP_BUILDDIR, free_port, memory_config
from test_tls import made  # noqa: F401 (the fixture that stops the TLS daemons)

# RHEMACTL=path runs another build's rhemactl (the sanitizer build, for one)
RHEMACTL = Path(os.environ.get("RHEMACTL", TOP_BUILDDIR / "rhemactl"))


def ctl(*args, env=None, stdin=None, addr=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RHEMA_")}
    e.update(env or {})
    argv = [str(RHEMACTL), *map(str, args)]
    if addr:
        argv += ["--addr", addr]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, env=e)


def addr(d):
    return f"127.0.0.1:{d.port}"


def jctl(d, *args, **kw):
    r = ctl(*args, "--format", "json", addr=addr(d), **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_sessions_round_trip(daemon):
    a = addr(daemon)
    # put from flags, from --data, from stdin
    r = ctl("sessions", "put", "s1", "--topic", "plan", "--participants", "alice,bob", addr=a)
    assert r.returncode == 0, r.stderr
    assert "topic: plan" in r.stdout and "version: 1" in r.stdout
    r = ctl("sessions", "put", "s2", "--data", '{"topic": "t2"}', addr=a)
    assert r.returncode == 0, r.stderr
    r = ctl("sessions", "put", "s3", "--format", "json", stdin='{"topic": "from stdin"}', addr=a)
    assert r.returncode == 0 and json.loads(r.stdout)["topic"] == "from stdin", r.stderr

    got = jctl(daemon, "sessions", "get", "s1")
    status, _, api = daemon.json("GET", "/v1/sessions/s1")
    assert status == 200
    for k in ("id", "topic", "participants", "status", "version", "created_at"):
        assert got[k] == api[k], k
    assert got["participants"] == ["alice", "bob"]

    listed = jctl(daemon, "sessions", "list")
    assert [s["id"] for s in listed["items"]] == ["s1", "s2", "s3"]
    assert listed == daemon.json("GET", "/v1/sessions")[2] | {"items": listed["items"]}
    r = ctl("sessions", "list", addr=a)
    assert r.returncode == 0
    # the options may also come before the command
    r2 = subprocess.run([str(RHEMACTL), "--addr", a, "--format", "table", "sessions", "list"],
                        capture_output=True, text=True, timeout=60)
    assert r2.returncode == 0 and r2.stdout == r.stdout, r2.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "TOPIC", "STATUS"]
    assert all(any(line.startswith(i + " ") for line in lines) for i in ("s1", "s2", "s3"))
    # a page, and the hint for the next one
    r = ctl("sessions", "list", "--limit", "2", addr=a)
    assert r.returncode == 0 and "--cursor" in r.stderr
    assert len(jctl(daemon, "sessions", "list", "--limit", "2")["items"]) == 2
    assert [s["id"] for s in jctl(daemon, "sessions", "list", "--participant", "bob")["items"]] \
        == ["s1"]

    # If-Match from --if-version
    r = ctl("sessions", "put", "s1", "--topic", "x", "--if-version", "7", addr=a)
    assert r.returncode == 1 and "412" in r.stderr
    assert daemon.json("GET", "/v1/sessions/s1")[2]["topic"] == "plan"
    r = ctl("sessions", "put", "s1", "--topic", "plan 2", "--if-version", "1", addr=a)
    assert r.returncode == 0, r.stderr
    assert daemon.json("GET", "/v1/sessions/s1")[2]["topic"] == "plan 2"
    r = ctl("sessions", "delete", "s1", "--if-version", "1", addr=a)
    assert r.returncode == 1 and "412" in r.stderr

    r = ctl("sessions", "delete", "s1", addr=a)
    assert r.returncode == 0 and "deleted s1" in r.stdout
    assert daemon.request("GET", "/v1/sessions/s1").status == 404
    r = ctl("sessions", "get", "s1", addr=a)
    assert r.returncode == 3 and "404" in r.stderr and r.stdout == ""
    assert ctl("sessions", "delete", "s1", addr=a).returncode == 3
    # a body the daemon refuses: 400 is an error (1), nothing stored
    r = ctl("sessions", "put", "bad", "--data", '{"topic": "t", "status": "Nope"}', addr=a)
    assert r.returncode == 1 and "status" in r.stderr
    assert daemon.request("GET", "/v1/sessions/bad").status == 404


def test_usage_errors_are_2(daemon):
    a = addr(daemon)
    for args in (["sessions", "get"], ["sessions", "frobnicate", "x"],
                 ["sessions", "get", "a", "b"], ["status", "--format", "yaml"],
                 ["sessions", "list", "--limit", "0"], ["sessions", "list", "--bogus"],
                 ["sessions", "put", "x", "--data", "{not json"],
                 ["sessions", "put", "x", "--data", "[1]"],
                 ["cluster", "members", "x"], ["keys", "restore-backup"],
                 ["services", "register", "x", "--weight", "heavy"],
                 ["--format", "json", "keys", "split"], ["--addr", a]):
        r = ctl(*args, addr=a, stdin="")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr
    assert daemon.request("GET", "/v1/sessions/x").status == 404


def test_connection_refused_is_1(tmp_path):
    r = ctl("status", addr=f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "rhemactl" in r.stderr and r.stdout == ""
    r = ctl("sessions", "list", env={"RHEMA_ADDR": f"127.0.0.1:{free_port()}"})
    assert r.returncode == 1


def test_status_cluster_alerts_metrics(daemon):
    a = addr(daemon)
    st = jctl(daemon, "status")
    health = daemon.json("GET", "/health")[2]
    assert st["health"]["version"] == health["version"]
    assert set(st["health"]["components"]) == set(health["components"])
    assert st["cluster"]["leader"] == daemon.json("GET", "/v1/cluster")[2]["leader"]
    r = ctl("status", addr=a)
    assert r.returncode == 0, r.stderr
    assert f"version: {health['version']}" in r.stdout
    assert re.search(r"^storage\s+Healthy", r.stdout, re.M)
    assert "leader: " in r.stdout and "epoch: 1" in r.stdout

    cl = jctl(daemon, "cluster")
    api = daemon.json("GET", "/v1/cluster")[2]
    assert cl["leader"] == api["leader"] and cl["epoch"] == api["epoch"]
    r = ctl("cluster", addr=a)
    assert r.returncode == 0 and api["leader"] in r.stdout and "NODE_ID" in r.stdout
    assert jctl(daemon, "cluster", "leader")["is_leader"] is True
    nodes = jctl(daemon, "cluster", "nodes")
    assert nodes == daemon.json("GET", "/v1/cluster/nodes")[2] | {"items": nodes["items"]}

    al = jctl(daemon, "alerts")
    assert set(al) == set(daemon.json("GET", "/v1/alerts")[2])
    assert ctl("alerts", addr=a).returncode == 0

    r = ctl("metrics", addr=a)
    assert r.returncode == 0 and "# TYPE" in r.stdout


def test_agents(daemon):
    a = addr(daemon)
    body = {"name": "a one", "agent_type": "worker", "status": "Idle", "capabilities": ["x"]}
    r = ctl("agents", "put", "a1", "--data", json.dumps(body), addr=a)
    assert r.returncode == 0, r.stderr
    got = jctl(daemon, "agents", "get", "a1")
    assert got == daemon.json("GET", "/v1/agents/a1")[2]
    assert ctl("agents", "heartbeat", "a1", addr=a).returncode == 0
    assert daemon.json("GET", "/v1/agents/a1")[2]["is_online"] is True
    listed = jctl(daemon, "agents", "list", "--capability", "x")
    assert [x["id"] for x in listed["items"]] == ["a1"]
    r = ctl("agents", "list", addr=a)
    assert r.returncode == 0 and "a1" in r.stdout and "NAME" in r.stdout
    stats = jctl(daemon, "agents", "stats")
    api = daemon.json("GET", "/v1/agents/stats")[2]
    assert stats.keys() == api.keys()
    assert {k: v for k, v in stats.items() if k != "timestamp"} == \
        {k: v for k, v in api.items() if k != "timestamp"}
    r = ctl("agents", "put", "a1", "--status", "Busy", "--data", json.dumps(body), addr=a)
    assert r.returncode == 0, r.stderr
    tr = jctl(daemon, "agents", "transitions", "a1")
    assert [t["to_status"] for t in tr["items"]][-1] == "Busy"
    assert ctl("agents", "delete", "a1", addr=a).returncode == 0
    assert ctl("agents", "get", "a1", addr=a).returncode == 3
    assert ctl("agents", "heartbeat", "nobody", addr=a).returncode == 3


def test_services(daemon):
    a = addr(daemon)
    r = ctl("services", "register", "web-1", "--name", "web", "--address", "127.0.0.1:9001",
            "--weight", "3", addr=a)
    assert r.returncode == 0, r.stderr
    got = jctl(daemon, "services", "get", "web-1")
    assert got["name"] == "web" and got["weight"] == 3
    assert got == daemon.json("GET", "/v1/services/web-1")[2]
    r = ctl("services", "list", "--name", "web", addr=a)
    assert r.returncode == 0 and "web-1" in r.stdout and "127.0.0.1:9001" in r.stdout
    assert ctl("services", "deregister", "web-1", addr=a).returncode == 0
    assert ctl("services", "get", "web-1", addr=a).returncode == 3


def keyring_config(tmp, key):
    return (memory_config() +
            f'advanced_features: {{ key_management: {{ key_file = "{key}";\n'
            f'  keyring_path = "{tmp}/keyring";\n'
            f'  backup = {{ directory = "{tmp}/keybackups"; }}; }}; }};\n')


def test_keys_init_file_is_accepted_by_rhemad(daemons, tmp_path):
    key = tmp_path / "master.key"
    r = ctl("keys", "init", "--out", key)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = key.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert f'key_file = "{key}";' in r.stdout
    # refuses to overwrite; --force replaces
    r = ctl("keys", "init", "--out", key)
    assert r.returncode == 1 and "exists" in r.stderr and key.read_text() == text
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    r = ctl("keys", "init", "--out", key, "--force")
    assert r.returncode == 0 and key.read_text() != text
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert ctl("keys", "init").returncode == 2
    assert ctl("keys", "init", "--out", tmp_path / "nodir" / "k").returncode == 1

    d = daemons(config=keyring_config(tmp_path, key)).start()
    a = addr(d)
    s = jctl(d, "keys", "stats")
    assert s["current_version"] == d.json("GET", "/v1/keys/stats")[2]["current_version"]
    rot = jctl(d, "keys", "rotate")
    assert rot["current_version"] == s["current_version"] + 1
    r = ctl("keys", "stats", addr=a)
    assert r.returncode == 0 and f"current_version: {rot['current_version']}" in r.stdout
    r = ctl("keys", "backup", "one.bak", addr=a)
    assert r.returncode == 0 and "one.bak" in r.stdout, r.stderr
    assert (tmp_path / "keybackups" / "one.bak").exists()
    assert ctl("keys", "backup", "one.bak", addr=a).returncode == 1  # 409: exists
    r = ctl("keys", "backup", "--format", "json", addr=a)  # the daemon names it
    assert r.returncode == 0, r.stderr
    auto = json.loads(r.stdout)["name"]
    assert auto.startswith("keyring-") and (tmp_path / "keybackups" / auto).exists()
    assert ctl("keys", "restore-backup", "one.bak", addr=a).returncode == 0
    assert ctl("keys", "restore-backup", "none.bak", addr=a).returncode == 1
    # the offline verbs are still offline: verify takes a path
    r = ctl("keys", "verify", tmp_path / "keybackups" / "one.bak",
            "-o", f"advanced_features.key_management.key_file={key}",
            "-o", f"advanced_features.key_management.keyring_path={tmp_path}/keyring")
    assert r.returncode == 0, r.stderr


def test_api_key_needed_when_auth_is_on(daemons):
    out = subprocess.run([str(RHEMACTL), "auth", "new-key", "--name", "admin",
                          "--roles", "admin"], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    key, group = out.splitlines()
    config = (memory_config() + "security: {\n  api_keys: { enabled = true; keys = (\n    "
              + group + "\n  ); };\n  roles = ( { name = \"admin\"; permissions = [ \"*\" ]; } );\n};\n")
    d = daemons(config=config).start()
    a = addr(d)
    r = ctl("sessions", "list", addr=a)
    assert r.returncode == 1 and "401" in r.stderr and "--key" in r.stderr
    r = ctl("sessions", "list", "--key", "rk_AAAAAAAAAAAA_" + "A" * 28, addr=a)
    assert r.returncode == 1 and "401" in r.stderr
    r = ctl("sessions", "put", "s1", "--topic", "t", "--key", key, addr=a)
    assert r.returncode == 0, r.stderr
    r = ctl("sessions", "get", "s1", "--format", "json",
            env={"RHEMA_ADDR": a, "RHEMA_API_KEY": key})
    assert r.returncode == 0 and json.loads(r.stdout)["topic"] == "t"
    r = ctl("status", env={"RHEMA_ADDR": f"http://{a}/", "RHEMA_API_KEY": key})
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not installed")
def test_https_with_cacert_and_client_certificate(tmp_path, made):
    from test_tls import CA, client_context, start, tls_config
    ca = CA(tmp_path / "pki", "test-ca")
    cert, key = ca.server()
    good = ca.client("ctl", "/O=acme/CN=ctl")
    d = start(tmp_path, tls_config(cert, key, f'  client_ca_file = "{ca.cert}";\n'),
              client_context(ca, good), made)
    url = f"https://127.0.0.1:{d.port}"
    r = ctl("sessions", "put", "t1", "--topic", "tls", "--cacert", ca.cert, "--cert", good[0],
            "--key-file", good[1], addr=url)
    assert r.returncode == 0, r.stderr
    r = ctl("sessions", "get", "t1", "--format", "json", "--cert", good[0],
            "--key-file", good[1], env={"RHEMA_ADDR": url, "RHEMA_CACERT": str(ca.cert)})
    assert r.returncode == 0 and json.loads(r.stdout)["topic"] == "tls", r.stderr
    # no client certificate, or a CA that did not sign the server: no answer, exit 1
    assert ctl("status", "--cacert", ca.cert, addr=url).returncode == 1
    assert ctl("status", "--cert", good[0], "--key-file", good[1], addr=url).returncode == 1


def test_long_request_shows_progress_on_a_terminal(daemons, tmp_path):
    key = tmp_path / "master.key"
    assert ctl("keys", "init", "--out", key).returncode == 0
    d = daemons(config=keyring_config(tmp_path, key)).start()
    master, slave = os.openpty()
    try:
        p = subprocess.run([str(RHEMACTL), "keys", "backup", "tty.bak", "--addr", addr(d)],
                           stdout=subprocess.PIPE, stderr=slave, timeout=60)
        os.close(slave)
        slave = None
        err = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert p.returncode == 0 and b"tty.bak" in p.stdout
    assert re.search(rb"backing up the keyring: \d+\.\ds", err), err
    # not on a pipe: stderr stays quiet
    r = ctl("keys", "backup", "pipe.bak", addr=addr(d))
    assert r.returncode == 0 and r.stderr == ""


COMPLETION = TOP_BUILDDIR.parent / "etc" / "bash-completion" / "rhemactl"
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"


@pytest.mark.skipif(not os.path.exists(BASH_COMPLETION), reason="bash-completion not installed")
def test_bash_completion():
    src = os.environ.get("top_srcdir")
    comp = os.path.join(src, "etc/bash-completion/rhemactl") if src else str(COMPLETION)

    def complete(line):
        words = line.split(" ")
        script = (f"source {BASH_COMPLETION}; source {comp}; "
                  f"COMP_WORDS=({' '.join(repr(w) if w else repr('') for w in words)}); "
                  f"COMP_CWORD={len(words) - 1}; COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; "
                  "_rhemactl rhemactl; printf '%s\\n' \"${COMPREPLY[@]}\"")
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return set(r.stdout.split())

    assert {"status", "sessions", "keys"} <= complete("rhemactl ")
    assert complete("rhemactl sessions ") == {"list", "get", "put", "delete"}
    assert {"rotate", "stats", "init", "split"} <= complete("rhemactl keys ")
    assert complete("rhemactl sessions list --format ") == {"table", "json"}
    assert "--if-version" in complete("rhemactl sessions put s1 --")
