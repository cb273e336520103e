"""
GET /metrics (issue 11 item 1, doc/monitoring.md): the Prometheus text
format and OpenMetrics, exact request counters by route template, method
and code, consistent histograms, monitoring.enabled and
monitoring.metrics_path, replies answered later (group commit, the audit
stage) counted once; `promtool check metrics` on the output of a daemon
that served every subsystem, and a real Prometheus server that scrapes
rhemad and answers a PromQL query with the count this test made.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import (PLUGIN_DIR, free_port, memory_config, require_plugin, run_rhemad,
                      sqlite_config, wait_until)

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OM_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

SESSION = {"topic": "plan the rollout", "participants": ["alice", "bob"]}
AGENT = {"name": "coder one", "agent_type": "coder", "capabilities": ["rust"],
         "assigned_scope": "services/auth"}
MESSAGE = {"id": "m1", "message_type": "proposal", "priority": "High", "sender_id": "alice",
           "recipient_ids": ["bob"], "content": "ship on friday",
           "timestamp": "2026-01-02T03:04:05Z", "requires_ack": True, "metadata": {}}
SERVICE = {"name": "api", "address": "127.0.0.1:9"}


def parse(text):
    """{(name, frozenset(labels.items())): value} of every sample; the order of the names."""
    samples, order = {}, []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(3) or ""))
        key = (m.group(1), frozenset(labels.items()))
        assert key not in samples, f"sample twice: {line!r}"
        samples[key] = float(m.group(4))
        order.append(m.group(1))
    return samples, order


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def scrape(d, accept=None):
    r = d.request("GET", "/metrics", headers={"Accept": accept} if accept else None)
    assert r.status == 200, r.body
    return r


def requests_total(samples, route, method, code):
    return value(samples, "rhema_http_requests_total", route=route, method=method, code=code)


def check_histogram(samples, name, **labels):
    """Buckets cumulative and ascending in le, +Inf = _count; returns _count."""
    buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in samples.items()
                      if k[0] == name + "_bucket" and
                      {a: b for a, b in k[1] if a != "le"} == labels), key=lambda x: x[0])
    assert buckets and buckets[-1][0] == float("inf"), (name, labels)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), (name, labels, buckets)
    count = value(samples, name + "_count", **labels)
    assert count == buckets[-1][1], (name, labels, count, buckets[-1])
    assert value(samples, name + "_sum", **labels) >= 0
    return count


def test_exact_counters_templates_and_histograms(daemon):
    n_get, n_put = 7, 3
    for i in range(n_put):
        st, _, body = daemon.json("PUT", f"/v1/sessions/sess-{i}", SESSION)
        assert st in (200, 201), body
    for i in range(n_get):
        assert daemon.request("GET", f"/v1/sessions/sess-{i % n_put}").status == 200
    assert daemon.request("GET", "/v1/sessions/never-made").status == 404
    assert daemon.request("GET", "/no/such/route").status == 404
    assert daemon.request("DELETE", "/health").status == 405
    r = scrape(daemon)
    assert r.headers.get("Content-Type") == TEXT_TYPE
    text = r.body.decode()
    samples, _ = parse(text)
    route = "/v1/sessions/{id}"
    assert requests_total(samples, route, "GET", "200") == n_get
    assert requests_total(samples, route, "GET", "404") == 1
    assert requests_total(samples, route, "PUT", "201") == n_put
    # what matched no route, and a 405 (no route of that method), are "unmatched"
    assert requests_total(samples, "unmatched", "GET", "404") == 1
    assert requests_total(samples, "unmatched", "DELETE", "405") == 1
    # templates, never the ids of the requests
    assert "sess-1" not in text and "never-made" not in text and "/no/such" not in text
    routes = {dict(k[1]).get("route") for k in samples if k[0].startswith("rhema_http_")}
    routes.discard(None)
    assert routes <= {"unmatched", route, "/metrics", "/health/live"}, routes
    # the duration histogram counts every reply of the route
    assert check_histogram(samples, "rhema_http_request_duration_seconds",
                           route=route) == n_get + 1 + n_put
    assert value(samples, "rhema_http_requests_in_flight") == 1  # this scrape
    assert value(samples, "rhema_http_connections") >= 1
    # the storage calls behind them: a session GET reads its record and its
    # access counts with one get_many(), the 404 too
    assert check_histogram(samples, "rhema_storage_operation_duration_seconds",
                           backend="memory", operation="get_many") >= n_get + 1
    assert value(samples, "rhema_storage_errors_total", backend="memory",
                 operation="get_many") == 0
    # process_* and build info
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0
    assert abs(value(samples, "process_start_time_seconds") - time.time()) < 3600
    assert [k for k in samples if k[0] == "rhema_build_info"][0]
    # a second scrape sees the first one, exactly once
    samples2, _ = parse(scrape(daemon).body.decode())
    assert requests_total(samples2, "/metrics", "GET", "200") == 1
    assert requests_total(samples2, route, "GET", "200") == n_get


def test_openmetrics(daemon):
    daemon.request("GET", "/v1/sessions/x")
    r = scrape(daemon, "application/openmetrics-text;version=1.0.0,"
                       "application/openmetrics-text;version=0.0.1;q=0.75,"
                       "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert r.headers.get("Content-Type") == OM_TYPE
    text = r.body.decode()
    assert text.endswith("# EOF\n")
    assert "# TYPE rhema_http_requests counter\n" in text
    assert "# TYPE rhema_http_requests_total" not in text
    samples, _ = parse(text.replace("# EOF\n", ""))
    assert requests_total(samples, "/v1/sessions/{id}", "GET", "404") == 1
    # a scraper that refuses OpenMetrics (q=0) gets the text format
    r = scrape(daemon, "application/openmetrics-text; q=0, text/plain")
    assert r.headers.get("Content-Type") == TEXT_TYPE
    assert "# TYPE rhema_http_requests_total counter\n" in r.body.decode()
    assert "# EOF" not in r.body.decode()


def test_metrics_path_and_disabled(daemons, tmp_path):
    d = daemons("custom", overrides=["monitoring.metrics_path=/internal/metrics"]).start()
    r = d.request("GET", "/internal/metrics")
    assert r.status == 200 and r.headers.get("Content-Type") == TEXT_TYPE
    assert d.request("GET", "/metrics").status == 404
    samples, _ = parse(d.request("GET", "/internal/metrics").body.decode())
    assert requests_total(samples, "/metrics", "GET", "200") == 1  # the template's label
    assert requests_total(samples, "unmatched", "GET", "404") == 1
    d.stop()

    off = daemons("off", overrides=["monitoring.enabled=false"]).start()
    r = off.request("GET", "/metrics")
    assert r.status == 404 and b"monitoring.enabled" in r.body
    off.stop()

    for bad, why in (("/v1/metrics", "hide API routes"), ("/health/m", "hide API routes"),
                     ("/a b", "must be")):
        conf = tmp_path / "bad.conf"
        conf.write_text(memory_config() + f'monitoring: {{ metrics_path = "{bad}"; }};\n')
        p = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
        assert p.returncode != 0 and why in p.stderr, (bad, p.stderr)


def test_deferred_replies_counted_once(daemons, tmp_path):
    """Group-committed session writes and audit-deferred writes: each reply once."""
    require_plugin("sqlite")
    d = daemons("deferred", config=sqlite_config(tmp_path / "m.db"),
                overrides=["security.audit.enabled=true",
                           f"security.audit.file={tmp_path}/audit.log"]).start()
    n = 6
    for i in range(n):
        st, _, body = d.json("PUT", f"/v1/sessions/d{i}", SESSION)
        assert st == 201, body
        st, _, body = d.json("POST", f"/v1/sessions/d{i}/messages", MESSAGE)
        assert st in (200, 201), body
        st, _, body = d.json("PUT", f"/v1/agents/a{i}", AGENT)
        assert st in (200, 201), body
    samples, _ = parse(scrape(d).body.decode())
    assert requests_total(samples, "/v1/sessions/{id}", "PUT", "201") == n
    msgs = sum(v for k, v in samples.items() if k[0] == "rhema_http_requests_total" and
               dict(k[1])["route"] == "/v1/sessions/{id}/messages")
    assert msgs == n
    agents = sum(v for k, v in samples.items() if k[0] == "rhema_http_requests_total" and
                 dict(k[1])["route"] == "/v1/agents/{agent_id}")
    assert agents == n
    assert value(samples, "rhema_http_requests_in_flight") == 1
    assert value(samples, "rhema_group_commit_writes_total") >= 2 * n


def busy_daemon(daemons, tmp_path):
    """A daemon with a keyring, a one-node cluster and traffic on every subsystem."""
    require_plugin("sqlite")
    key = tmp_path / "master.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    config = (sqlite_config(tmp_path / "busy.db") +
              'advanced_features: { encryption: { algorithm = "xchacha20poly1305"; };\n'
              f'  key_management: {{ key_file = "{key}"; keyring_path = "{tmp_path}/keyring";\n'
              f'    backup = {{ directory = "{tmp_path}/keybackups"; }}; }}; }};\n')
    d = daemons("busy", config=config, overrides=[
        "distributed.enabled=true", "distributed.cluster.leader_lease_seconds=3",
        "distributed.cluster.heartbeat_interval_seconds=1",
        "distributed.cluster.node_timeout_seconds=3", "distributed.node.node_id=solo"]).start()
    assert wait_until(lambda: d.json("GET", "/v1/cluster/leader")[2].get("is_leader"), 10, 0.05)
    for i in range(3):
        assert d.json("PUT", f"/v1/sessions/s{i}", SESSION)[0] == 201
        assert d.json("POST", f"/v1/sessions/s{i}/messages", MESSAGE)[0] in (200, 201)
        assert d.json("PUT", f"/v1/agents/a{i}", AGENT)[0] in (200, 201)
        assert d.json("PUT", f"/v1/services/svc{i}", SERVICE)[0] in (200, 201)
        assert d.json("PUT", f"/v1/consensus/n{i}/state", {"term": 1})[0] in (200, 201)
        assert d.request("POST", "/v1/messages/compress", b"hello " * 200).status == 200
        assert d.request("POST", "/v1/messages/encrypt", b"attack at dawn").status == 200
    assert d.request("GET", "/v1/keys/stats").status == 200
    assert d.request("GET", "/v1/cluster").status == 200
    assert d.request("GET", "/v1/services?name=api").status == 200
    return d


def test_promtool_check_metrics(daemons, tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package prometheus)")
    d = busy_daemon(daemons, tmp_path)
    text = scrape(d).body.decode()
    samples, _ = parse(text)
    for name in ("rhema_keyring_current_version", "rhema_keyring_active_keys",
                 "rhema_cluster_is_leader", "rhema_cluster_has_leader", "rhema_cluster_epoch",
                 "rhema_group_commits_total", "rhema_compression_messages_total",
                 "rhema_session_access_entries", "rhema_session_access_flushes_total",
                 "rhema_encryption_operations_total"):
        assert any(k[0] == name for k in samples), name
    assert value(samples, "rhema_cluster_is_leader") == 1
    assert value(samples, "rhema_cluster_nodes", status="Online") == 1
    assert value(samples, "rhema_keyring_messages_current_key") >= 3
    assert value(samples, "rhema_service_instances", health="healthy") + \
        value(samples, "rhema_service_instances", health="not_healthy") == 3
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "" and p.stderr.strip() == "", p.stdout + p.stderr


def prom_query(port, q):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_real_prometheus_scrapes(daemon, tmp_path):
    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    n = 11
    for _ in range(n):
        assert daemon.request("GET", "/v1/sessions/absent").status == 404
    cfg = tmp_path / "prometheus.yml"
    # loopback only: one static target, no alertmanager, no remote write
    cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                   "scrape_configs:\n  - job_name: rhema\n    static_configs:\n"
                   f"      - targets: ['127.0.0.1:{daemon.port}']\n")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={cfg}",
                             f"--storage.tsdb.path={tmp_path}/tsdb",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(tmp_path), start_new_session=True)
    log.close()
    try:
        q = ('sum(rhema_http_requests_total{job="rhema",route="/v1/sessions/{id}",'
             'method="GET",code="404"})')
        got = []

        def answered():
            try:
                res = prom_query(port, q)
            except OSError:
                return False
            got[:] = res["data"]["result"]
            return bool(got)
        assert wait_until(answered, 20, 0.25), (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(got[0]["value"][1]) == n
        res = prom_query(port, 'up{job="rhema"}')
        assert res["data"]["result"][0]["value"][1] == "1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_permission_and_open_route(daemons):
    """With API keys on: 401 without a key, 403 without metrics:read, 200 with it;
    security.api_keys.open_routes may open it (at a custom metrics_path too)."""
    from test_auth import auth_config, bearer, new_key
    admin, reader, other = new_key("admin", "admin"), new_key("r", "scraper"), new_key("o", "other")
    roles = {"admin": ["*"], "scraper": ["metrics:read"], "other": ["health:read"]}
    conf = auth_config(memory_config(), [admin[1], reader[1], other[1]], roles)
    d = daemons("keys", config=conf).start()
    assert d.request("GET", "/metrics").status == 401
    assert d.request("GET", "/metrics", headers=bearer(other[0])).status == 403
    r = d.request("GET", "/metrics", headers=bearer(reader[0]))
    assert r.status == 200, r.body
    samples, _ = parse(r.body.decode())
    assert requests_total(samples, "/metrics", "GET", "401") == 1
    assert requests_total(samples, "/metrics", "GET", "403") == 1
    d.stop()
    opened = daemons("open", config=conf.replace(
        "enabled = true;", 'enabled = true; open_routes = [ "/metrics" ];'),
        overrides=["monitoring.metrics_path=/prom"]).start()
    assert opened.request("GET", "/prom").status == 200
    assert opened.request("GET", "/v1/stats").status == 401
