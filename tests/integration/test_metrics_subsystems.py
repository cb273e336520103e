"""
The metrics families of the subsystems (issue 11 item 1, "every subsystem
that lands later adds its own"; doc/monitoring.md): authentication, rate
limiting, the audit log, TLS and the AI gateway.  Each family appears and
moves when its subsystem acts; `promtool check metrics` passes on the
scrape of a daemon with all of them on; a failing upstream opens its
circuit breaker, which the gauge and GET /health show.
"""

import json
import shutil
import subprocess
import time

import pytest

from conftest import memory_config, wait_until
from test_ai_gateway import ai_config
from test_auth import auth_config, bad_checksum, bearer, new_key
from test_metrics import parse, value
from test_tls import CA, OPENSSL, TlsDaemon, client_context, made, refused  # noqa: F401 (made: the fixture)

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hello"}]}


def total(samples, name, **labels):
    """The sample's value, 0 when the daemon wrote none (a label set not seen yet)."""
    v = value(samples, name, **labels)
    return 0 if v is None else v


def names(samples):
    return {k[0] for k in samples}


def promtool_ok(text):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package prometheus)")
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "" and p.stderr.strip() == "", p.stdout + p.stderr




@pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
def test_every_subsystem_on_families_move_and_promtool_passes(tmp_path, made, fake_openai):
    ca = CA(tmp_path / "pki", "test-ca")
    cert, key = ca.server()
    up = fake_openai("a")
    admin_key, admin_group = new_key("admin", "admin")
    user_key, user_group = new_key("user", "user")
    audit_log = tmp_path / "audit.log"
    config = (ai_config(
        [{"name": "a", "base_url": up.url}], [{"name": "gpt", "upstream": "a"}],
        "rate_limiting: { enabled = true; requests_per_day = 1000; requests_per_minute = 0; "
        "burst = 2; roles = ( { role = \"admin\"; requests_per_day = 0; "
        "requests_per_minute = 0; } ); };")
        + auth_config("", [admin_group, user_group],
                      {"admin": ["*"], "user": ["sessions:read", "ai:use"]},
                      f'  audit: {{ enabled = true; file = "{audit_log}"; }};\n')
        + "service: { tls: {\n"
        f'  enabled = true; cert_file = "{cert}"; key_file = "{key}";\n'
        "}; };\n")
    d = TlsDaemon(tmp_path, config=config)
    d.client_ctx = client_context(ca)
    made.append(d)
    d.start()
    admin, user = bearer(admin_key), bearer(user_key)

    def scrape():
        r = d.request("GET", "/metrics", headers=admin)
        assert r.status == 200, r.body
        return r.body.decode()

    s0, _ = parse(scrape())
    # authentication outcomes, one of each
    assert d.request("GET", "/v1/sessions").status == 401                      # missing
    assert d.request("GET", "/v1/sessions", headers=bearer("nonsense")).status == 401
    assert d.request("GET", "/v1/sessions", headers=bearer(bad_checksum(user_key))).status == 401
    assert d.request("GET", "/v1/sessions",
                     headers=bearer(new_key("stranger", "admin")[0])).status == 401  # unknown
    assert d.request("GET", "/v1/agents", headers=user).status == 403          # forbidden
    # a runtime key: read from the backend once, then from the worker's cache
    st, _, body = d.json("POST", "/v1/auth/keys", {"name": "rt", "roles": ["admin"]}, admin)
    assert st == 201, body
    rt = bearer(body["key"])
    assert d.request("GET", "/v1/sessions", headers=rt).status == 200
    # the rate limit of the user key: burst 2, so the third request in a row is refused
    statuses = [d.request("GET", "/v1/sessions", headers=user).status for _ in range(6)]
    assert 429 in statuses, statuses
    allowed_user = statuses.count(200)
    refused_user = statuses.count(429)
    # the gateway, through the admin key (not limited)
    r = d.request("POST", "/v1/chat/completions", CHAT, headers=admin)
    assert r.status == 200, r.body
    # audit records reach the file before the scrape counts them
    assert wait_until(lambda: audit_log.exists() and audit_log.stat().st_size > 0, 10)

    text = scrape()
    s1, _ = parse(text)

    def delta(name, **labels):
        return total(s1, name, **labels) - total(s0, name, **labels)

    assert delta("rhema_auth_requests_total", result="missing") == 1
    assert delta("rhema_auth_requests_total", result="malformed") == 1
    assert delta("rhema_auth_requests_total", result="checksum") == 1
    assert delta("rhema_auth_requests_total", result="unknown") == 1
    assert delta("rhema_auth_requests_total", result="forbidden") == 1
    # ok: the forbidden one, the key creation, the runtime key's GET, the user's limited
    # requests, the chat and this scrape
    assert delta("rhema_auth_requests_total", result="ok") == 1 + 1 + 1 + 6 + 1 + 1
    assert delta("rhema_auth_key_lookups_total", source="backend") >= 2  # stranger and rt
    assert total(s1, "rhema_auth_static_keys") == 2
    assert total(s1, "rhema_auth_runtime_keys") == total(s0, "rhema_auth_runtime_keys") + 1 == 1
    assert delta("rhema_ratelimit_decisions_total", scope="key", result="allowed") == allowed_user
    assert delta("rhema_ratelimit_decisions_total", scope="key", result="refused") == refused_user
    assert total(s1, "rhema_ratelimit_decisions_total", scope="client", result="allowed") == 0
    assert delta("rhema_ratelimit_backend_duration_seconds_count") == allowed_user + refused_user
    assert delta("rhema_audit_records_total") >= 1
    assert delta("rhema_audit_written_bytes_total") > 0
    assert total(s1, "rhema_audit_write_duration_seconds_count") >= 1
    assert total(s1, "rhema_audit_failed_records_total") == 0
    assert "rhema_audit_queue_records" in names(s1)
    # every request here came over TLS: handshakes were counted and timed
    assert total(s1, "rhema_tls_handshakes_total", result="ok") >= 1
    assert total(s1, "rhema_tls_handshake_duration_seconds_count") == \
        total(s1, "rhema_tls_handshakes_total", result="ok")
    expiry = total(s1, "rhema_tls_certificate_expiry_seconds")
    assert 86400 < expiry <= 2 * 86400 + 60, expiry  # the test CA issues for 2 days
    # the gateway
    assert delta("rhema_ai_requests_total", model="gpt", route="/v1/chat/completions",
                 code="200") == 1
    assert delta("rhema_ai_upstream_attempts_total", upstream="a", outcome="ok") == 1
    assert delta("rhema_ai_upstream_duration_seconds_count", upstream="a") == 1
    assert delta("rhema_ai_tokens_total", model="gpt", type="prompt") == 3
    assert delta("rhema_ai_tokens_total", model="gpt", type="completion") == 2
    assert total(s1, "rhema_ai_upstream_circuit_breaker_state", upstream="a") == 0
    assert total(s1, "rhema_ai_upstream_in_flight", upstream="a") == 0
    # no key secret and no raw path in any label
    for secret in (admin_key, user_key, body["key"]):
        assert secret not in text and secret.split("_")[-1] not in text
    promtool_ok(text)
    # the health component of TLS (2 days left: Degraded, under 14 days)
    st, _, h = d.json("GET", "/health", headers=admin)
    assert h["components"]["tls"]["status"] == "Degraded", h
    assert h["components"]["upstream_a"]["status"] == "Healthy", h


@pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
def test_tls_handshake_failures_by_reason(tmp_path, made):
    ca = CA(tmp_path / "pki", "test-ca")
    other = CA(tmp_path / "pki-other", "other-ca")
    cert, key = ca.server()
    good = ca.client("agent-7", "/O=acme/CN=agent-7")
    stranger = other.client("intruder", "/O=acme/CN=agent-7")
    d = TlsDaemon(tmp_path, config=memory_config() + "service: { tls: {\n"
                  f'  enabled = true; cert_file = "{cert}"; key_file = "{key}";\n'
                  f'  client_ca_file = "{ca.cert}";\n'"}; };\n")
    d.client_ctx = client_context(ca, good)
    made.append(d)
    d.start()

    def samples():
        return parse(d.request("GET", "/metrics").body.decode())[0]

    s0 = samples()
    assert refused(d, client_context(ca))            # no client certificate
    assert refused(d, client_context(ca, stranger))  # signed by a CA the daemon does not trust

    def moved():
        s = samples()
        return (total(s, "rhema_tls_handshakes_total", result="no_client_certificate") >
                total(s0, "rhema_tls_handshakes_total", result="no_client_certificate") and
                total(s, "rhema_tls_handshakes_total", result="bad_client_certificate") >
                total(s0, "rhema_tls_handshakes_total", result="bad_client_certificate"))
    assert wait_until(moved, 10, 0.1), samples()
    s1 = samples()
    assert total(s1, "rhema_tls_handshakes_total", result="ok") >= 1
    assert total(s1, "rhema_tls_client_certificates_total") >= 1
    text = d.request("GET", "/metrics").body.decode()
    promtool_ok(text)


def test_failing_upstream_opens_the_breaker_gauge_and_health(daemons, fake_openai):
    a = fake_openai("a")
    b = fake_openai("b")
    d = daemons(config=ai_config(
        [{"name": "a", "base_url": a.url, "priority": 1}, {"name": "b", "base_url": b.url, "priority": 2}],
        [{"name": "gpt", "upstream": ["a", "b"]}],
        "enable_fallback = false;\n"
        "retries: { max_retries = 1; backoff_base_ms = 10; backoff_max_ms = 20; };\n"
        "circuit_breaker: { failure_threshold = 2; open_seconds = 600; };")).start()
    a.default({"status": 500})

    def samples():
        return parse(d.request("GET", "/metrics").body.decode())[0]

    # a fails, the retry goes to b and succeeds; twice: a's breaker opens
    for _ in range(2):
        r = d.request("POST", "/v1/chat/completions", CHAT)
        assert r.status == 200, r.body
    s = samples()
    assert total(s, "rhema_ai_upstream_attempts_total", upstream="a", outcome="server_error") == 2
    assert total(s, "rhema_ai_upstream_attempts_total", upstream="b", outcome="ok") == 2
    assert total(s, "rhema_ai_upstream_retries_total", upstream="a", reason="server_error") == 2
    assert total(s, "rhema_ai_upstream_duration_seconds_count", upstream="a") == 2
    assert total(s, "rhema_ai_upstream_circuit_breaker_state", upstream="a") == 1
    assert total(s, "rhema_ai_upstream_circuit_breaker_state", upstream="b") == 0
    assert total(s, "rhema_ai_requests_total", model="gpt", route="/v1/chat/completions",
                 code="200") == 2
    st, _, h = d.json("GET", "/health")
    assert h["components"]["upstream_a"]["status"] == "Unhealthy", h
    assert "circuit breaker open" in h["components"]["upstream_a"]["message"], h
    assert h["components"]["upstream_b"]["status"] == "Healthy", h
    # the open breaker passes a over
    r = d.request("POST", "/v1/chat/completions", CHAT)
    assert r.status == 200 and r.headers["X-Rhema-Upstream"] == "b"
    s = samples()
    assert total(s, "rhema_ai_upstream_skips_total", upstream="a", reason="breaker_open") >= 1
    # b failing too: nothing left, a 503 counted under its code
    b.default({"status": 500})
    r = d.request("POST", "/v1/chat/completions", CHAT)
    assert r.status in (502, 503), r.body
    s = samples()
    assert total(s, "rhema_ai_requests_total", model="gpt", route="/v1/chat/completions",
                 code=str(r.status)) == 1
    promtool_ok(d.request("GET", "/metrics").body.decode())


def test_alert_rules_may_name_every_documented_series(tmp_path):
    """Every metric of doc/monitoring.md's tables (a histogram's _bucket, _sum and _count)
    is a series an operator's alert rule may name: `rhemad -t` accepts it."""
    import re
    from conftest import PLUGIN_DIR, run_rhemad
    from pathlib import Path
    import os
    doc = (Path(os.environ["top_srcdir"]) / "doc" / "monitoring.md").read_text()
    series = []
    for m in re.finditer(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|", doc, re.M):
        name, kind = m.groups()
        series += [name + s for s in ("_bucket", "_sum", "_count")] if kind == "histogram" \
            else [name]
    assert "rhema_ai_upstream_circuit_breaker_state" in series
    assert "rhema_tls_handshake_duration_seconds_bucket" in series
    rules = ", ".join(f'{{ name = "r{i}"; metric = "{s}"; threshold = 1; }}'
                      for i, s in enumerate(series))
    conf = tmp_path / "rhemad.conf"
    conf.write_text(memory_config() + "monitoring: { alerts: { enabled = true;\n"
                    f"  rules = ( {rules} ); }}; }};\n")
    p = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-c", str(conf)], cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    conf.write_text(memory_config() + "monitoring: { alerts: { enabled = true;\n"
                    '  rules = ( { name = "x"; metric = "rhema_ai_no_such_thing"; threshold = 1; } ); }; };\n')
    p = run_rhemad(["-t", "-P", str(PLUGIN_DIR), "-c", str(conf)], cwd=str(tmp_path))
    assert p.returncode != 0 and "rhema_ai_no_such_thing" in p.stderr, p.stderr


def test_ratelimit_backend_failure_counted(daemons, redis):
    """failure_mode open: a count the backend cannot make is served and counted as an error."""
    from test_ratelimit import limits
    proc, port = redis
    cfg = ('persistence: { backend = "redis"; redis = { host = "127.0.0.1"; '
           f'port = {port}; password = "s3cret pass"; timeout_ms = 500; }}; }};\n'
           + limits(per_day=1000, burst=100, extra='failure_mode = "open";'))
    d = daemons(config=cfg).start()
    assert d.request("GET", "/v1/sessions").status == 200
    s0 = parse(d.request("GET", "/metrics").body.decode())[0]
    assert total(s0, "rhema_ratelimit_decisions_total", scope="client", result="allowed") == 2
    assert total(s0, "rhema_ratelimit_backend_failures_total", action="served") == 0
    proc.kill()
    proc.wait(10)
    assert d.request("GET", "/v1/auth/whoami").status == 200
    r = d.request("GET", "/metrics")
    assert r.status == 200
    s1 = parse(r.body.decode())[0]
    # whoami and this scrape: two counts that failed, both served
    assert total(s1, "rhema_ratelimit_decisions_total", scope="client", result="error") == 2
    assert total(s1, "rhema_ratelimit_backend_failures_total", action="served") == 2
    assert total(s1, "rhema_ratelimit_backend_failures_total", action="refused") == 0
    assert total(s1, "rhema_ratelimit_backend_duration_seconds_count") == 4


def test_fallbacks_and_the_spent_retry_budget_counted(daemons, fake_openai):
    a = fake_openai("a")
    b = fake_openai("b")
    d = daemons(config=ai_config(
        [{"name": "a", "base_url": a.url}, {"name": "b", "base_url": b.url}],
        [{"name": "gpt", "upstream": "a", "fallbacks": ["alt"]}, {"name": "alt", "upstream": "b"}],
        "enable_fallback = true;\n"
        "retries: { max_retries = 3; backoff_base_ms = 10; backoff_max_ms = 20; "
        "budget_percent = 0; budget_reserve = 0; };\n"
        "circuit_breaker: { failure_threshold = 1000; };")).start()
    a.default({"status": 503})
    for _ in range(3):
        r = d.request("POST", "/v1/chat/completions", CHAT)
        assert r.status == 200 and r.headers["X-Rhema-Upstream"] == "b", r.body
    s = parse(d.request("GET", "/metrics").body.decode())[0]
    # no budget: a's failure is never retried, the request falls back to alt each time
    assert total(s, "rhema_ai_retry_budget_exhausted_total") == 3
    assert total(s, "rhema_ai_upstream_retries_total", upstream="a", reason="server_error") == 0
    assert total(s, "rhema_ai_fallbacks_total", model="gpt") == 3
    assert total(s, "rhema_ai_fallbacks_total", model="alt") == 0
    assert total(s, "rhema_ai_retry_budget_tokens") == 0
    assert total(s, "rhema_ai_requests_total", model="gpt", route="/v1/chat/completions",
                 code="200") == 3
    # tokens are counted for the model that answered
    assert total(s, "rhema_ai_tokens_total", model="alt", type="prompt") == 9
    assert total(s, "rhema_ai_tokens_total", model="gpt", type="prompt") == 0
    assert len(a.requests) == 3 and len(b.requests) == 3
