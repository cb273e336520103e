"""
Backups and retention, black-box: `rhemactl backup create|list|restore`
against the data of a stopped rhemad (sqlite and file backends), restore
refused while rhemad runs on that data (its pidfile is locked) and allowed
with --force, scheduled backups written by rhemad itself, and
persistence.max_data_size_bytes (507 Insufficient Storage, nothing changed).
"""

import os
import re
import subprocess
import time

import pytest

from conftest import PLUGIN_DIR, TOP_BUILDDIR, require_plugin, wait_until

RHEMACTL = TOP_BUILDDIR / "rhemactl"
NAME = re.compile(r"^rhema-(?P<backend>[a-z0-9_-]+)-\d{8}T\d{6}Z(-\d+)?\.bak$")


def backend_config(backend, tmp_path, extra=""):
    data = tmp_path / "data"
    if backend == "sqlite":
        group = f'sqlite = {{ path = "{data}/rhema.db"; }};'
    else:
        group = f'file = {{ directory = "{data}/files"; }};'
    return (f'service: {{ pidfile = "{tmp_path}/rhemad.pid"; }};\n'
            f'persistence: {{\n  backend = "{backend}";\n  {group}\n'
            f'  backup_directory = "{tmp_path}/backups";\n{extra}}};\n')


def rhemactl(*args, check=True):
    r = subprocess.run([str(RHEMACTL), *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert r.returncode == 0, f"rhemactl {' '.join(map(str, args))}: {r.stdout}{r.stderr}"
    return r


def put_session(d, sid, topic, status="Active"):
    st, h, body = d.json("PUT", f"/v1/sessions/{sid}",
                         {"topic": topic, "participants": ["a1"], "status": status})
    assert st in (200, 201), body
    return h["ETag"]


def get_session(d, sid):
    st, _, body = d.json("GET", f"/v1/sessions/{sid}")
    return st, body


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_backup_create_list_restore_round_trip(daemons, tmp_path, backend):
    require_plugin(backend)
    conf = tmp_path / "rhemad.conf"
    d = daemons(config=backend_config(backend, tmp_path))
    d.start()
    etag_a = put_session(d, "keep-a", "before the backup")
    put_session(d, "keep-b", "also before")
    d.stop()

    out = rhemactl("backup", "create", "-c", conf, "-P", PLUGIN_DIR).stdout.strip()
    path = out.splitlines()[-1]
    assert os.path.exists(path), out
    assert os.path.dirname(path) == str(tmp_path / "backups")
    m = NAME.match(os.path.basename(path))
    assert m and m.group("backend") == backend, path
    assert (os.path.isdir(path) if backend == "file" else os.path.isfile(path))

    listing = rhemactl("backup", "list", "-c", conf).stdout
    assert os.path.basename(path) in listing and backend in listing, listing

    # change things after the backup
    d.start()
    put_session(d, "keep-a", "changed after the backup")
    put_session(d, "gone", "created after the backup")
    assert d.request("DELETE", "/v1/sessions/keep-b").status == 204
    d.stop()

    r = rhemactl("backup", "restore", path, "-c", conf, "-P", PLUGIN_DIR)
    assert "restored" in r.stdout

    d.start()
    st, body = get_session(d, "keep-a")
    assert st == 200 and body["topic"] == "before the backup", body
    # the version (ETag) is the snapshot's
    st, h, _ = d.json("GET", "/v1/sessions/keep-a")
    assert h["ETag"] == etag_a
    assert get_session(d, "keep-b")[0] == 200
    assert get_session(d, "gone")[0] == 404
    st, _, page = d.json("GET", "/v1/sessions?status=Active")
    assert sorted(s["id"] for s in page["items"]) == ["keep-a", "keep-b"]
    # writes after the restore get versions above every earlier one
    etag_new = put_session(d, "keep-a", "after the restore")
    assert int(etag_new.strip('"')) > int(etag_a.strip('"'))
    d.stop()


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_restore_of_a_damaged_backup_changes_nothing(daemons, tmp_path, backend):
    require_plugin(backend)
    conf = tmp_path / "rhemad.conf"
    d = daemons(config=backend_config(backend, tmp_path))
    d.start()
    put_session(d, "s1", "one")
    d.stop()
    path = rhemactl("backup", "create", "-c", conf, "-P", PLUGIN_DIR).stdout.strip()
    d.start()
    put_session(d, "s2", "written after the backup")
    d.stop()
    # cut the largest file of the backup in half
    files = [path] if os.path.isfile(path) else [
        os.path.join(root, f) for root, _, fs in os.walk(path) for f in fs]
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    r = rhemactl("backup", "restore", path, "-c", conf, "-P", PLUGIN_DIR, check=False)
    assert r.returncode != 0
    assert "nothing changed" in r.stderr, r.stderr
    d.start()
    assert get_session(d, "s2")[0] == 200
    assert get_session(d, "s1")[0] == 200
    d.stop()


def test_restore_refused_while_the_daemon_runs(daemons, tmp_path):
    require_plugin("sqlite")
    conf = tmp_path / "rhemad.conf"
    d = daemons(config=backend_config("sqlite", tmp_path))
    d.start()
    put_session(d, "s1", "in the backup")
    path = rhemactl("backup", "create", "-c", conf, "-P", PLUGIN_DIR).stdout.strip()
    put_session(d, "s2", "after the backup")

    r = rhemactl("backup", "restore", path, "-c", conf, "-P", PLUGIN_DIR, check=False)
    assert r.returncode != 0
    assert "running" in r.stderr and str(d.pid) in r.stderr, r.stderr
    assert get_session(d, "s2")[0] == 200  # nothing was restored

    # --force overrides the check (the operator's responsibility)
    r = rhemactl("backup", "restore", path, "-c", conf, "-P", PLUGIN_DIR, "--force")
    assert "restored" in r.stdout
    d.stop()
    d.start()
    assert get_session(d, "s1")[0] == 200
    assert get_session(d, "s2")[0] == 404
    d.stop()


def test_restore_without_a_pidfile_needs_force(tmp_path):
    require_plugin("sqlite")
    conf = tmp_path / "rhemad.conf"
    conf.write_text(backend_config("sqlite", tmp_path).replace(
        f'pidfile = "{tmp_path}/rhemad.pid";', 'pidfile = "";'))
    path = rhemactl("backup", "create", "-c", conf, "-P", PLUGIN_DIR).stdout.strip()
    r = rhemactl("backup", "restore", path, "-c", conf, "-P", PLUGIN_DIR, check=False)
    assert r.returncode != 0 and "--force" in r.stderr, r.stderr
    rhemactl("backup", "restore", path, "-c", conf, "-P", PLUGIN_DIR, "--force")


def test_backup_list_newest_first(tmp_path):
    require_plugin("sqlite")
    conf = tmp_path / "rhemad.conf"
    conf.write_text(backend_config("sqlite", tmp_path))
    first = rhemactl("backup", "create", "-c", conf, "-P", PLUGIN_DIR).stdout.strip()
    second = rhemactl("backup", "create", "-c", conf, "-P", PLUGIN_DIR).stdout.strip()
    assert first != second
    (tmp_path / "backups" / "notes.txt").write_text("not a backup")
    lines = rhemactl("backup", "list", "-c", conf).stdout.splitlines()
    names = [l.split()[0] for l in lines[1:]]
    assert names == [os.path.basename(second), os.path.basename(first)], lines
    assert "notes.txt" not in "\n".join(lines)
    empty = rhemactl("backup", "list", "-c", conf, "-d", tmp_path / "none").stdout
    assert "no backups" in empty


def test_scheduled_backup_written_by_the_daemon(daemons, tmp_path):
    """With enable_backups and no backup yet, rhemad writes one shortly after it starts."""
    require_plugin("sqlite")
    d = daemons(config=backend_config("sqlite", tmp_path,
                                      "  enable_backups = true;\n  backup_interval_hours = 24;\n"))
    d.start()
    put_session(d, "s1", "x")
    backups = tmp_path / "backups"

    def written():
        return [f for f in (os.listdir(backups) if backups.exists() else [])
                if NAME.match(f)]

    assert wait_until(written, 20, step=0.2), d.log()
    assert oct(os.stat(backups).st_mode & 0o777) == "0o750"
    d.stop()


def test_write_past_max_data_size_is_507_and_changes_nothing(daemons, tmp_path):
    d = daemons(overrides=["persistence.max_data_size_bytes=4000"])
    d.start()
    refused = None
    written = []
    deadline = time.monotonic() + 30
    i = 0
    while refused is None and time.monotonic() < deadline:
        sid = f"fill-{i}"
        r = d.request("PUT", f"/v1/sessions/{sid}",
                      {"topic": "x" * 400, "participants": ["a1"], "status": "Active"})
        if r.status == 507:
            refused = (sid, r)
            break
        assert r.status == 201, r.body
        written.append(sid)
        i += 1
        time.sleep(0.05)  # the size gauge refreshes every few seconds
    assert refused is not None, "no 507 before the deadline"
    sid, r = refused
    err = r.json()["error"]
    assert err["code"] == "insufficient_storage", err
    assert err.get("message")
    # the refused write changed nothing
    assert get_session(d, sid)[0] == 404
    st, _, page = d.json("GET", "/v1/sessions?limit=1000")
    assert sorted(s["id"] for s in page["items"]) == sorted(written)
    # an update of an existing session that would grow the data is refused too,
    # and leaves the session as it was
    st, h, before = d.json("GET", f"/v1/sessions/{written[0]}")
    r = d.request("PUT", f"/v1/sessions/{written[0]}",
                  {"topic": "y" * 4000, "participants": ["a1"], "status": "Active"})
    assert r.status == 507
    st, h2, after = d.json("GET", f"/v1/sessions/{written[0]}")
    assert after["topic"] == before["topic"] and h2["ETag"] == h["ETag"]
    # deleting still works (it frees space)
    assert d.request("DELETE", f"/v1/sessions/{written[0]}").status == 204
    d.stop()


def test_rhemactl_reads_the_files_of_the_data_directory(daemons, tmp_path):
    # relative paths of the configuration are relative to
    # service.data_directory for rhemactl as for rhemad (issue 18, item 2):
    # a backup made from elsewhere is of rhemad's database, not of a new
    # empty one in the directory rhemactl was run in
    require_plugin("sqlite")
    datadir = tmp_path / "var"
    config = (f'service: {{ pidfile = "{tmp_path}/rhemad.pid"; data_directory = "{datadir}"; }};\n'
              'persistence: {\n  backend = "sqlite";\n  sqlite = { path = "rhema.db"; };\n'
              '  backup_directory = "backups";\n};\n')
    d = daemons(config=config)
    d.start()
    put_session(d, "in-datadir", "stored by rhemad")
    d.stop()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([str(RHEMACTL), "backup", "create", "-c", str(d.conf), "-P", str(PLUGIN_DIR)],
                       capture_output=True, text=True, timeout=60, cwd=elsewhere)
    assert r.returncode == 0, r.stdout + r.stderr
    path = r.stdout.strip()
    assert path.startswith(str(datadir / "backups")), path
    assert not (elsewhere / "rhema.db").exists() and not list(elsewhere.iterdir())
    assert os.path.getsize(path) > 0
    listing = subprocess.run([str(RHEMACTL), "backup", "list", "-c", str(d.conf)],
                             capture_output=True, text=True, timeout=60, cwd=elsewhere).stdout
    assert os.path.basename(path) in listing, listing
