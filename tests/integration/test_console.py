"""
The metrics history (GET /v1/stats/history, monitoring.metrics_interval_seconds,
monitoring.storage_backend) and the console under /ui/ (monitoring.console):
the files, their types, ETags, traversal, and the pages in headless Chromium.
"""

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from conftest import (TOP_BUILDDIR, TOP_SRCDIR, memory_config, run_rhemad, sqlite_config,
                      wait_until)

UI_DIR = TOP_SRCDIR / "ui"
ARTIFACTS = TOP_BUILDDIR / "test-artifacts"

FAST = ["monitoring.metrics_interval_seconds=1"]


def history(d, query=""):
    status, _, body = d.json("GET", "/v1/stats/history" + query)
    assert status == 200, body
    return body


def wait_samples(d, n, timeout=30, query=""):
    """Wait until the history holds at least n samples; returns it."""
    got = {}

    def enough():
        got["h"] = history(d, query)
        return len(got["h"]["timestamps"]) >= n
    assert wait_until(enough, timeout, 0.2), f"fewer than {n} samples: {got.get('h')}"
    return got["h"]


def session(sid, status="Active", topic="planning"):
    return {"id": sid, "topic": topic, "participants": ["agent-a", "agent-b"], "status": status,
            "started_at": "2026-01-01T00:00:00Z", "messages": [], "decisions": []}


# ---- history ----

def test_history_samples_at_the_interval(daemons):
    d = daemons(overrides=FAST).start()
    first = wait_samples(d, 2)
    assert first["interval_seconds"] == 1 and first["storage_backend"] == "memory"
    assert first["max_samples"] == 720
    n = 40
    for i in range(n):
        assert d.request("GET", "/v1/sessions").status == 200
    h = wait_samples(d, len(first["timestamps"]) + 3)
    ts = h["timestamps"]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    # one sample a second: consecutive samples at least ~1 s apart (no upper bound:
    # a loaded machine may be late, never early)
    assert all(b - a >= 900 for a, b in zip(ts, ts[1:])), ts
    # every series is answered, one value per timestamp, with its unit
    assert set(h["series"]) == set(h["units"]) and "request_rate" in h["series"]
    for name, col in h["series"].items():
        assert len(col) == len(ts), name
    # the replies made show up in the rates: rate x seconds summed over the samples
    # counts at least the requests made (the history's own requests come on top)
    rates, seen = h["series"]["request_rate"], 0.0
    for i in range(1, len(ts)):
        if rates[i] is not None:
            seen += rates[i] * (ts[i] - ts[i - 1]) / 1000
    assert seen >= n * 0.9, (seen, rates)
    lat = [v for v in h["series"]["latency_p95_ms"] if v is not None]
    assert lat and all(v >= 0 for v in lat)
    assert h["series"]["cluster_nodes_online"][-1] == 1
    assert h["series"]["cluster_is_leader"][-1] == 1
    assert h["series"]["keyring_current_version"][-1] is None  # key management is off
    assert h["series"]["process_resident_bytes"][-1] > 0


def test_history_since_and_series(daemons):
    d = daemons(overrides=FAST).start()
    h = wait_samples(d, 3)
    ts = h["timestamps"]
    later = history(d, f"?since={ts[1]}")
    assert later["timestamps"] and all(t > ts[1] for t in later["timestamps"])
    assert later["timestamps"][0] == ts[2]
    # an RFC 3339 time works too (milliseconds)
    iso = __import__("datetime").datetime.utcfromtimestamp(ts[1] / 1000).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert history(d, "?since=" + urllib.parse.quote(iso))["timestamps"][0] == ts[2]
    # nothing newer than the future
    assert history(d, f"?since={ts[-1] + 3600_000}")["timestamps"] == []
    one = history(d, "?series=request_rate,latency_p99_ms")
    assert set(one["series"]) == {"request_rate", "latency_p99_ms"}
    assert set(one["units"]) == {"request_rate", "latency_p99_ms"}
    assert one["units"]["latency_p99_ms"] == "ms"


@pytest.mark.parametrize("query, names", [
    ("?series=nope", "unknown series 'nope'"),
    ("?series=", "empty name"),
    ("?series=request_rate,", "empty name"),
    ("?series=request_rate,request_rate", "given twice"),
    ("?since=yesterday", "parameter 'since'"),
    ("?since=-5", "parameter 'since'"),
    ("?limit=0", "parameter 'limit'"),
    ("?limit=x", "parameter 'limit'"),
    ("?bogus=1", "parameter 'bogus'"),
    ("?since=1&since=2", "given more than once"),
])
def test_history_bad_query(daemons, query, names):
    d = daemons(overrides=FAST).start()
    status, _, body = d.json("GET", "/v1/stats/history" + query)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_field" and names in body["error"]["message"], body


def test_history_is_bounded(daemons):
    d = daemons(overrides=FAST + ["monitoring.history_max_samples=3"]).start()
    h = wait_samples(d, 3)
    assert h["max_samples"] == 3
    oldest = h["timestamps"][0]
    # two more samples: the ring still holds 3, the oldest went
    assert wait_until(lambda: history(d)["timestamps"][0] > oldest + 1500, 30, 0.2)
    h = history(d)
    assert len(h["timestamps"]) == 3 and not h["truncated"]
    two = history(d, "?limit=2")
    assert two["truncated"] and len(two["timestamps"]) == 2
    assert two["timestamps"] == history(d)["timestamps"][-2:] or \
        two["timestamps"][-1] >= h["timestamps"][-1]  # the newest kept (a sample may land between)


def test_history_storage_mode_survives_a_restart(daemons, tmp_path):
    conf = sqlite_config(tmp_path / "rhema.db")
    # the samples are stored under the node id, which by default holds the port (a
    # new one each start here): a fixed id, as a deployment has
    over = FAST + ["monitoring.storage_backend=storage", "monitoring.history_retention_seconds=3600",
                   "distributed.node.node_id=hist-node"]
    d = daemons(config=conf, overrides=over).start()
    h = wait_samples(d, 3)
    assert h["storage_backend"] == "storage"
    before = h["timestamps"]
    assert d.stop() == 0
    d2 = daemons(name="again", config=conf, overrides=over).start()
    after = history(d2)["timestamps"]
    # the samples of the first run are back, before any new one
    assert after[:len(before)] == before, (before, after)
    assert "stored samples loaded" in d2.log()


def test_history_memory_mode_starts_empty(daemons, tmp_path):
    conf = sqlite_config(tmp_path / "rhema.db")
    d = daemons(config=conf, overrides=FAST).start()
    before = wait_samples(d, 2)["timestamps"]
    assert d.stop() == 0
    d2 = daemons(name="again", config=conf, overrides=FAST).start()
    assert all(t > before[-1] for t in history(d2)["timestamps"])


def test_history_storage_retention_prunes(daemons, tmp_path):
    """Stored samples past the retention are deleted, and not loaded at start."""
    import sqlite3
    db_path = tmp_path / "rhema.db"
    conf = sqlite_config(db_path)
    over = FAST + ["monitoring.storage_backend=storage", "monitoring.history_retention_seconds=60",
                   "distributed.node.node_id=hist-node"]
    d = daemons(config=conf, overrides=over).start()
    node = d.json("GET", "/v1/cluster")[2]["node_id"]
    now = wait_samples(d, 2)["timestamps"][-1]
    assert d.stop() == 0
    # two samples written as the daemon writes them: one past the retention, one within
    old, recent = now - 3600_000, now - 30_000
    db = sqlite3.connect(db_path)
    for t in (old, recent):
        value = json.dumps({"t": t, "v": {"request_rate": 7.5}}).encode()
        db.execute("insert into kv(ns, key, value, version, expires_at) values (?, ?, ?, 1, 0)",
                   ("monitoring.history", f"{node}/{t:016d}", value))
    db.commit()
    db.close()
    d2 = daemons(name="again", config=conf, overrides=over).start()
    h = history(d2, "?series=request_rate")
    assert recent in h["timestamps"] and old not in h["timestamps"]
    assert h["series"]["request_rate"][h["timestamps"].index(recent)] == 7.5

    def pruned():
        db = sqlite3.connect(db_path, timeout=5)
        try:
            return db.execute("select count(*) from kv where ns = ? and key = ?",
                              ("monitoring.history", f"{node}/{old:016d}")).fetchone()[0] == 0
        finally:
            db.close()
    assert wait_until(pruned, 30, 0.2), "the sample past the retention is still stored"


def test_history_settings_are_checked():
    for o, msg in (("monitoring.storage_backend=disk", "must be one of memory, storage"),
                   ("monitoring.history_max_samples=1", "between 2 and 100000"),
                   ("monitoring.metrics_interval_seconds=0", "between 1 and 3600"),
                   ("monitoring.history_retention_seconds=5", "between 60")):
        r = run_rhemad(["-t", "-o", o])
        assert r.returncode != 0 and msg in r.stderr, (o, r.stderr)


def test_history_off_with_monitoring(daemons):
    d = daemons(overrides=["monitoring.enabled=false"]).start()
    status, _, body = d.json("GET", "/v1/stats/history")
    assert status == 404 and "monitoring.enabled" in body["error"]["message"]


# ---- the console's files ----

@pytest.mark.parametrize("path, ctype, source", [
    ("/ui/", "text/html; charset=utf-8", "index.html"),
    ("/ui/index.html", "text/html; charset=utf-8", "index.html"),
    ("/ui/console.js", "text/javascript; charset=utf-8", "console.js"),
    ("/ui/console.css", "text/css; charset=utf-8", "console.css"),
    ("/ui/favicon.svg", "image/svg+xml", "favicon.svg"),
])
def test_console_files_and_types(daemons, path, ctype, source):
    d = daemons().start()
    r = d.request("GET", path)
    assert r.status == 200 and r.headers.get("Content-Type") == ctype
    assert r.body == (UI_DIR / source).read_bytes()
    assert r.headers.get("X-Content-Type-Options") == "nosniff"
    assert r.headers.get("Cache-Control") == "no-cache"
    if source == "index.html":
        assert "script-src 'self'" in r.headers.get("Content-Security-Policy")


def test_console_redirect(daemons):
    d = daemons().start()
    r = d.request("GET", "/ui")
    assert r.status == 301 and r.headers.get("Location") == "/ui/"


def test_console_etag(daemons):
    d = daemons().start()
    r = d.request("GET", "/ui/console.js")
    etag = r.headers.get("ETag")
    assert r.status == 200 and re.fullmatch(r'"[0-9a-f]{16}"', etag)
    assert d.request("GET", "/ui/console.js").headers.get("ETag") == etag  # stable
    r = d.request("GET", "/ui/console.js", headers={"If-None-Match": etag})
    assert r.status == 304 and r.body == b"" and r.headers.get("ETag") == etag
    r = d.request("GET", "/ui/console.js", headers={"If-None-Match": f'"x", W/{etag}'})
    assert r.status == 304
    r = d.request("GET", "/ui/console.js", headers={"If-None-Match": '"0000000000000000"'})
    assert r.status == 200 and len(r.body) > 1000
    other = d.request("GET", "/ui/console.css").headers.get("ETag")
    assert other != etag
    r = d.request("HEAD", "/ui/console.css")
    assert r.status == 200 and r.body == b""


@pytest.mark.parametrize("raw", [
    "/ui/..", "/ui/%2e%2e", "/ui/.%2e", "/ui/%2e%2e%2fMakefile.am", "/ui/..%2fMakefile.am",
    "/ui/..%2f..%2f..%2fetc%2fpasswd", "/ui/../Makefile.am", "/ui/../../etc/passwd",
    "/ui/%2e%2e/Makefile.am", "/ui/.", "/ui/.hidden.js", "/ui/%2fetc%2fpasswd",
    "/ui/Makefile.am", "/ui/nothere.js", "/ui/index.html%00.js", "/ui//etc/passwd",
    "/ui/%5c..%5cMakefile.am",
])
def test_console_no_traversal(daemons, raw):
    d = daemons().start()
    r = d.request("GET", raw)
    assert r.status in (400, 404), (raw, r.status, r.body[:200])
    assert b"root:" not in r.body and b"AUTOMAKE" not in r.body and b"SUBDIRS" not in r.body


def test_console_directory_setting(daemons, tmp_path):
    own = tmp_path / "myui"
    own.mkdir()
    (own / "index.html").write_text("<!DOCTYPE html><title>mine</title>")
    (own / "app.js").write_text("console.log(1)")
    (tmp_path / "secret.js").write_text("SECRET")
    os.symlink(tmp_path / "secret.js", own / "link.js")
    (own / "sub").mkdir()
    (own / "notes.xyz").write_text("unknown type")
    d = daemons(overrides=[f"monitoring.console.directory={own}"]).start()
    r = d.request("GET", "/ui/")
    assert r.status == 200 and b"mine" in r.body
    assert d.request("GET", "/ui/app.js").status == 200
    for name in ("link.js", "sub", "notes.xyz", "console.js"):
        r = d.request("GET", "/ui/" + name)
        assert r.status == 404 and b"SECRET" not in r.body, name
    assert f"serving /ui/ from {own}" in d.log()


def test_console_off_and_bad_directory(daemons, tmp_path):
    d = daemons(overrides=["monitoring.console.enabled=false"]).start()
    status, _, body = d.json("GET", "/ui/")
    assert status == 404 and "monitoring.console.enabled" in body["error"]["message"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_rhemad(["-f", "-P", os.environ.get("RHEMA_PLUGIN_DIR", str(TOP_BUILDDIR / "plugins/.libs")),
                    "-o", 'persistence.backend=memory', "-o", "service.listen=127.0.0.1:1",
                    "-o", f"monitoring.console.directory={empty}"], cwd=str(tmp_path))
    assert r.returncode != 0
    assert f"monitoring.console.directory '{empty}': no index.html there" in r.stderr + r.stdout


def test_console_files_open_with_keys_on(daemons):
    """The files need no key (a browser cannot send one for a page); the data does."""
    conf = memory_config() + 'security: { api_keys: { enabled = true; }; };\n'
    d = daemons(config=conf).start()
    assert d.request("GET", "/ui/").status == 200
    assert d.request("GET", "/ui/console.js").status == 200
    assert d.request("GET", "/v1/stats/history").status == 401
    assert d.request("GET", "/v1/cluster").status == 401


# ---- the pages in a real browser ----

def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(tmp_path, url, *extra):
    exe = chromium()
    args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=9000",
            "--window-size=1400,1300", *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env=dict(os.environ, HOME=str(tmp_path)))


def console_messages(stderr):
    """The page's console lines (messages, uncaught errors, failed loads) Chromium logged."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "CONSOLE(" in line]


def test_console_in_chromium(daemons, tmp_path):
    if not chromium():
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; "
                    "tools/install-deps installs it)")
    d = daemons(overrides=FAST).start()
    ids = [f"console-sess-{i}" for i in range(3)]
    for i, sid in enumerate(ids):
        r = d.request("PUT", f"/v1/sessions/{sid}",
                      session(sid, ["Active", "Paused", "Completed"][i], f"topic {i}"))
        assert r.status in (200, 201), r.body
    r = d.request("PUT", "/v1/services/console-svc-1",
                  {"name": "console-svc", "service_id": "console-svc-1", "address": "127.0.0.1:9"})
    assert r.status in (200, 201), r.body
    node = d.json("GET", "/v1/cluster")[2]["node_id"]
    # traffic over a few samples, so that the charts have points
    h = wait_samples(d, 2)
    for i in range(30):
        d.request("GET", f"/v1/sessions/{ids[i % 3]}")
    wait_until(lambda: any(v for v in history(d)["series"]["request_rate"][len(h["timestamps"]):]),
               30, 0.2)
    url = f"http://127.0.0.1:{d.port}/ui/"

    dom = run_chromium(tmp_path, url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_messages(dom.stderr) == [], console_messages(dom.stderr)
    page = dom.stdout
    for sid in ids:
        assert sid in page, f"session {sid} not on the page"
    assert node in page, "the node is not on the page"
    assert "console-svc-1" in page and "Healthy" in page
    assert "Nothing is firing." in page
    assert 'class="error"' not in page, "a panel shows an API error"
    assert "updated " in page  # the status line after a refresh without a problem
    m = re.search(r'<canvas id="chart-rate"[^>]*data-points="(\d+)"', page)
    assert m and int(m.group(1)) > 0, "the request rate chart has no points"
    m = re.search(r'<canvas id="chart-latency"[^>]*data-points="(\d+)"', page)
    assert m and int(m.group(1)) > 0, "the latency chart has no points"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "console.png"
    if shot.exists():
        shot.unlink()
    r = run_chromium(tmp_path, url, f"--screenshot={shot}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_messages(r.stderr) == [], console_messages(r.stderr)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
