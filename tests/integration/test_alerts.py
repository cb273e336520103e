"""
Alerts, stats and health components (issue 11 items 2, 3 and 4;
doc/monitoring.md, doc/http-api.md): an operator's rule crosses its threshold,
goes pending, firing, then resolved when the condition clears; a webhook
receiver on 127.0.0.1 gets both notifications in Alertmanager's v4 shape;
keep_firing_for holds an alert through a flap; a dead webhook (a port that
refuses, one that never answers) does not slow requests, and a full queue
drops the oldest, counted; GET /v1/stats and GET /health have the documented
shapes; a bad rule stops rhemad -t with the key at fault.
"""

import http.server
import json
import re
import socket
import threading
import time

import pytest

from conftest import PLUGIN_DIR, free_port, memory_config, run_rhemad, wait_until

SERVICE = {"name": "api", "address": "127.0.0.1:9"}
HEX16 = re.compile(r"^[0-9a-f]{16}$")


class Receiver:
    """An Alertmanager stand-in: a webhook receiver on 127.0.0.1 that keeps what it got."""

    def __init__(self):
        self.payloads = []
        received = self.payloads

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                received.append((self.headers.get("Content-Type"), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def statuses(self, name):
        return [p["status"] for _, p in self.payloads
                if p["groupLabels"].get("alertname") == name]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def config(rules, extra=""):
    return (memory_config() +
            "monitoring: { stats_refresh_seconds = 1;\n"
            "  alerts: { enabled = true; evaluation_interval_seconds = 1;\n"
            # the machine's own load must not raise the built-in rules during the test
            "    cpu_percent = 100.0; memory_percent = 100.0;\n"
            f"    {extra}\n"
            f"    rules = ( {rules} ); }}; }};\n")


def rule(d, name):
    s, _, body = d.json("GET", "/v1/alerts")
    assert s == 200, body
    found = [r for r in body["rules"] if r["name"] == name]
    assert len(found) == 1, body
    return found[0], body


def wait_state(d, name, state, timeout=30):
    assert wait_until(lambda: rule(d, name)[0]["state"] == state, timeout, step=0.1), \
        (name, state, rule(d, name)[0], d.log()[-3000:])


def metric_value(d, name, **labels):
    text = d.request("GET", "/metrics").body.decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            lab = line[len(name):].split(" ")[0].strip("{}")
            if lab and ",".join(sorted(lab.split(","))) == want or (not lab and not want):
                return float(line.rsplit(" ", 1)[1])
    return None


def check_alertmanager_payload(p, status, name):
    assert p["version"] == "4" and p["status"] == status, p
    assert p["receiver"] and p["groupKey"] and "truncatedAlerts" in p, p
    assert p["groupLabels"] == {"alertname": name}, p
    assert p["commonLabels"]["alertname"] == name, p
    assert len(p["alerts"]) == 1, p
    a = p["alerts"][0]
    assert a["status"] == status, a
    assert a["labels"]["alertname"] == name and a["labels"]["severity"] == "critical", a
    assert a["labels"]["team"] == "ops", a
    assert a["labels"]["instance"].startswith("127.0.0.1:"), a
    assert a["annotations"]["summary"] == "a service is registered", a
    assert "rhema_service_instances" in a["annotations"]["description"], a
    assert HEX16.match(a["fingerprint"]), a
    assert a["startsAt"].endswith("Z"), a
    if status == "firing":
        assert a["endsAt"] == "0001-01-01T00:00:00Z", a
    else:
        assert a["endsAt"] > a["startsAt"], a
    return a


SERVICES_RULE = ('{ name = "ServicesUp"; metric = "rhema_service_instances"; comparison = ">";'
                 ' threshold = 0; for_seconds = 2; severity = "critical";'
                 ' summary = "a service is registered"; labels = [ "team=ops" ]; }')


def test_rule_pending_firing_resolved_with_webhook(daemons, receiver):
    d = daemons(config=config(SERVICES_RULE, f'webhook_url = "{receiver.url}";')).start()
    r, body = rule(d, "ServicesUp")
    assert body["enabled"] is True and r["state"] == "inactive", r
    assert r["for_seconds"] == 2 and r["comparison"] == ">" and r["threshold"] == 0, r
    # the built-in rules are listed beside it
    names = {x["name"] for x in body["rules"]}
    assert {"RhemaHighCpu", "RhemaHighMemory", "RhemaHighErrorRate",
            "RhemaLowCompressionRatio"} <= names, names

    assert d.json("PUT", "/v1/services/s1", SERVICE)[0] == 201
    wait_state(d, "ServicesUp", "pending")
    r, body = rule(d, "ServicesUp")
    assert r["value"] == 1 and r["active_at"], r
    assert [a["state"] for a in body["active"] if a["name"] == "ServicesUp"] == ["pending"], \
        body["active"]
    assert receiver.payloads == []  # a pending alert is never sent
    wait_state(d, "ServicesUp", "firing")
    assert wait_until(lambda: receiver.statuses("ServicesUp") == ["firing"], 20, step=0.1), \
        receiver.payloads
    ctype, p = receiver.payloads[0]
    assert ctype == "application/json"
    firing = check_alertmanager_payload(p, "firing", "ServicesUp")

    assert d.request("DELETE", "/v1/services/s1").status in (200, 204)
    wait_state(d, "ServicesUp", "resolved")
    assert wait_until(lambda: receiver.statuses("ServicesUp") == ["firing", "resolved"], 20,
                      step=0.1), receiver.payloads
    resolved = check_alertmanager_payload(receiver.payloads[1][1], "resolved", "ServicesUp")
    assert resolved["fingerprint"] == firing["fingerprint"]
    assert resolved["startsAt"] == firing["startsAt"]

    _, body = rule(d, "ServicesUp")
    assert [a for a in body["active"] if a["name"] == "ServicesUp"] == []
    h = [h for h in body["history"] if h["name"] == "ServicesUp"][0]
    assert h["name"] == "ServicesUp" and h["state"] == "resolved", h
    assert h["raised_at"] <= h["fired_at"] <= h["resolved_at"], h
    # counted and logged
    assert metric_value(d, "rhema_alerts_transitions_total", alertname="ServicesUp",
                        state="pending") == 1
    assert metric_value(d, "rhema_alerts_transitions_total", alertname="ServicesUp",
                        state="firing") == 1
    assert metric_value(d, "rhema_alerts_transitions_total", alertname="ServicesUp",
                        state="resolved") == 1
    assert metric_value(d, "rhema_alert_notifications_total", outcome="sent") == 2
    log = d.log()
    assert "alert ServicesUp: inactive -> pending" in log
    assert "alert ServicesUp: pending -> firing" in log
    assert "alert ServicesUp: firing -> resolved" in log


def test_firing_alert_is_a_gauge(daemons):
    d = daemons(config=config('{ name = "Always"; metric = "rhema_build_info"; threshold = 0; }')).start()
    wait_state(d, "Always", "firing")
    assert metric_value(d, "rhema_alerts", alertname="Always", alertstate="firing",
                        severity="warning") == 1


def test_keep_firing_for_holds_through_a_flap(daemons):
    keep = 10
    d = daemons(config=config(
        '{ name = "Flappy"; metric = "rhema_service_instances"; threshold = 0;'
        f' keep_firing_for_seconds = {keep}; }}')).start()
    assert d.json("PUT", "/v1/services/s1", SERVICE)[0] == 201
    wait_state(d, "Flappy", "firing")
    assert d.request("DELETE", "/v1/services/s1").status in (200, 204)
    cleared = time.time()
    # the condition is false from the next evaluation on ...
    assert wait_until(lambda: rule(d, "Flappy")[0]["value"] == 0, 20, step=0.1)
    r, _ = rule(d, "Flappy")
    if time.time() - cleared < keep - 1:
        assert r["state"] == "firing", r  # ... and the alert is kept
    # it comes back within the window: the same alert goes on, no new episode
    assert d.json("PUT", "/v1/services/s1", SERVICE)[0] == 201
    assert wait_until(lambda: rule(d, "Flappy")[0]["value"] == 1, 20, step=0.1)
    r, body = rule(d, "Flappy")
    assert r["state"] == "firing" and r["transitions"]["firing"] == 1, r
    assert r["transitions"]["resolved"] == 0, r
    # cleared for good: resolved, but never before keep_firing_for has passed
    assert d.request("DELETE", "/v1/services/s1").status in (200, 204)
    cleared = time.time()
    wait_state(d, "Flappy", "resolved", timeout=keep + 30)
    assert time.time() - cleared >= keep - 1.5
    r, body = rule(d, "Flappy")
    assert r["transitions"]["firing"] == 1 and r["transitions"]["resolved"] == 1, r
    assert len([h for h in body["history"] if h["name"] == "Flappy"]) == 1, body["history"]


def test_dead_webhooks_do_not_slow_requests(daemons):
    """A receiver that refuses and one that never answers: requests are served as fast as
    without; attempts fail and are counted; a full queue drops the oldest, counted."""
    # a port where nothing listens: connections are refused
    refused = free_port()
    # a socket that listens and never accepts: the request is sent, no answer ever comes
    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(16)
    always = ('{ name = "A1"; metric = "rhema_build_info"; threshold = 0; },'
              '{ name = "A2"; metric = "process_open_fds"; threshold = 0; },'
              '{ name = "A3"; metric = "rhema_http_connections"; comparison = ">="; threshold = 0; }')
    try:
        for url, extra in ((f"http://127.0.0.1:{refused}/hook", "webhook_max_retries = 100;"),
                           (f"http://127.0.0.1:{stall.getsockname()[1]}/hook",
                            "webhook_timeout_seconds = 30; webhook_queue_size = 1;")):
            d = daemons(config=config(always, f'webhook_url = "{url}"; {extra}')).start()
            for name in ("A1", "A2", "A3"):
                wait_state(d, name, "firing")
            t0 = time.time()
            for i in range(200):
                assert d.request("GET", "/health/live").status == 200
            took = time.time() - t0
            # 200 loopback requests; the notifier waits on its receiver meanwhile
            assert took < 20, took
            if "max_retries" in extra:
                assert wait_until(lambda: (metric_value(d, "rhema_alert_notifications_total",
                                                        outcome="failed") or 0) >= 2, 20)
                assert metric_value(d, "rhema_alert_notifications_total", outcome="sent") == 0
                assert "webhook" in d.log() and "retry in" in d.log()
            else:
                # three notifications, the notifier stuck on the first: the queue of one
                # kept the newest
                assert wait_until(lambda: (metric_value(d, "rhema_alert_notifications_total",
                                                        outcome="dropped") or 0) >= 1, 20)
                assert "webhook queue full" in d.log()
            # the daemon stops promptly even with a transfer in progress
            t0 = time.time()
            d.stop()
            assert time.time() - t0 < 30
    finally:
        stall.close()


def test_stats_shape(daemons):
    d = daemons(config=config('{ name = "Never"; metric = "rhema_build_info"; threshold = 100; }'))
    d.start()
    assert d.json("PUT", "/v1/sessions/s1", {"topic": "t", "participants": ["a"]})[0] == 201
    assert d.json("PUT", "/v1/services/svc1", SERVICE)[0] == 201

    def sessions_counted():
        st = d.json("GET", "/v1/stats")[2]
        ns = st["persistence_stats"]["namespaces"]
        # a refresh after both writes (one between them counts the session only)
        return ns.get("sessions", {}).get("entries", 0) >= 1 and \
            ns.get("services", {}).get("entries", 0) >= 1
    assert wait_until(sessions_counted, 20, step=0.2)
    s, _, st = d.json("GET", "/v1/stats")
    assert s == 200
    # the fields clients used stay
    assert {"version", "uptime_seconds", "workers", "storage", "group_commit", "performance",
            "rate_limiting"} <= set(st), st
    ps = st["persistence_stats"]
    assert ps["backend"] == "memory" and ps["ok"] is True
    assert ps["total_entries"] >= 2 and ps["total_size_bytes"] > 0, ps
    assert ps["refresh_interval_seconds"] == 1 and ps["refreshed_at"], ps
    assert {"sessions", "consensus", "agents", "metrics", "configurations", "services",
            "cluster", "api_keys"} == set(ps["namespaces"]), ps
    for g in ps["namespaces"].values():
        assert set(g) == {"entries", "bytes", "ok"}, g
    assert ps["namespaces"]["services"]["entries"] >= 1
    assert sum(g["entries"] for g in ps["namespaces"].values()) <= ps["total_entries"]
    ds = st["distributed_stats"]
    assert ds["node_count"] == 1 and ds["service_count"] == 1, ds
    assert ds["cluster_health"] == "Healthy", ds
    af = st["advanced_features_stats"]
    assert {"performance_metrics", "performance_alerts", "key_stats"} <= set(af), af
    assert af["performance_alerts"]["enabled"] is True
    assert af["performance_alerts"]["firing"] == 0 and af["performance_alerts"]["pending"] == 0
    assert af["key_stats"]["active_keys"] == 0 and af["key_stats"]["enabled"] is False
    assert "totals" in af["performance_metrics"]
    req = st["requests"]
    assert req["counted"] is True and req["total"] >= 3 and req["success"] >= 3, req
    assert req["in_flight"] >= 1  # this request
    assert st["uptime_seconds"] >= 0


def test_health_components(daemons):
    d = daemons(config=memory_config()).start()
    s, _, h = d.json("GET", "/health")
    assert s == 200
    assert h["status"] == "ok" and h["overall"] == "Healthy", h
    assert h["storage"] == "ok" and h["backend"] == "memory"  # the fields kept
    assert list(h["components"]) == ["storage", "cluster", "keyring", "audit_log",
                                     "maintenance"], h
    for name, c in h["components"].items():
        assert set(c) == {"status", "message", "checked_at"}, c
        assert c["status"] == "Healthy" and c["message"], (name, c)
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", c["checked_at"]), c
    assert d.request("GET", "/health/live").status == 200
    assert d.request("GET", "/health/ready").status == 200


def test_alerts_off_keeps_the_old_shape(daemons):
    d = daemons(config=memory_config()).start()
    s, _, a = d.json("GET", "/v1/alerts")
    assert s == 200 and a["enabled"] is False and a["rules"] == []
    assert a["active"] == [] and a["history"] == []
    assert metric_value(d, "rhema_alerts_transitions_total") is None


@pytest.mark.parametrize("rule_text,message", [
    ('{ name = "X"; metric = "no_such_series"; threshold = 1; }',
     "monitoring.alerts.rules[0]: metric 'no_such_series'"),
    ('{ name = "X"; metric = "rhema_http_requests_total{code=5}"; threshold = 1; }',
     "monitoring.alerts.rules[0]: metric"),
    ('{ name = "X"; metric = "cpu_percent"; threshold = 1; labels = [ "alertname=y" ]; }',
     "monitoring.alerts.rules[0]: label 'alertname=y'"),
    ('{ name = "X"; metric = "cpu_percent"; }', "needs 'threshold'"),
])
def test_bad_rule_is_refused(tmp_path, rule_text, message):
    conf = tmp_path / "rhemad.conf"
    conf.write_text(config(rule_text))
    p = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-c", str(conf)], cwd=str(tmp_path))
    assert p.returncode != 0 and message in p.stderr, p.stderr
    p = run_rhemad(["-f", "-P", str(PLUGIN_DIR), "-c", str(conf), "-o", f"service.listen=127.0.0.1:{free_port()}"],
                   cwd=str(tmp_path), timeout=30)
    assert p.returncode != 0 and message in p.stderr + p.stdout, (p.stdout, p.stderr)


def test_webhook_url_must_be_http(tmp_path):
    conf = tmp_path / "rhemad.conf"
    conf.write_text(config('{ name = "X"; metric = "cpu_percent"; threshold = 1; }',
                           'webhook_url = "ftp://example.org/x";'))
    p = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-c", str(conf)], cwd=str(tmp_path))
    assert p.returncode != 0 and "monitoring.alerts.webhook_url" in p.stderr, p.stderr
