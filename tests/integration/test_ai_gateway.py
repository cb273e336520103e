"""
The AI gateway (issue 10 items 1-3, doc/ai-gateway.md) against the fake
OpenAI upstream of fake_openai.py: the OpenAI routes, the model rewritten
and everything else forwarded, OpenAI's error shape, the API key from the
environment, balancing, priority and max_concurrent, retries honouring
Retry-After, the circuit breaker, fallbacks, the attempts trail, and the
configuration checks of `rhemad -t`.
"""

import json
import signal
import os
import threading
import time

import pytest

from conftest import PLUGIN_DIR, memory_config, run_rhemad, wait_until

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def ai_config(upstreams, models, extra=""):
    ups = ", ".join("{ " + " ".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()};"
                                    for k, v in u.items()) + " }" for u in upstreams)
    mods = ", ".join("{ " + " ".join(f"{k} = {json.dumps(v) if not isinstance(v, list) else '[' + ', '.join(json.dumps(x) for x in v) + ']'};"
                                     for k, v in m.items()) + " }" for m in models)
    return (memory_config() +
            f"ai_service: {{\n  enabled = true;\n  upstreams = ( {ups} );\n  models = ( {mods} );\n"
            + ("" if "retries:" in extra else "  retries: { backoff_base_ms = 10; backoff_max_ms = 50; };\n")
            + f"{extra}\n}};\n")


def start(daemons, upstreams, models, extra="", env=None, **kw):
    d = daemons(config=ai_config(upstreams, models, extra), **kw)
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        d.start()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return d


def chat(d, model="gpt", headers=None, **extra):
    body = dict(CHAT, **extra)
    if model is not None:
        body["model"] = model
    return d.request("POST", "/v1/chat/completions", body, headers=headers)


def oai_error(r):
    e = r.json()
    assert set(e) == {"error"}, e
    assert set(e["error"]) == {"message", "type", "param", "code"}, e
    return e["error"]


def test_models_and_forwarding(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url, "api_key_env": "RHEMA_TEST_AI_KEY",
                         "headers": ["X-Org: acme"]}],
              [{"name": "gpt", "upstream": "a", "upstream_model": "fake-model"},
               {"name": "embed", "upstream": ["a"]}],
              'default_model = "gpt";', env={"RHEMA_TEST_AI_KEY": "sk-secret-123"})
    st, _, body = d.json("GET", "/v1/models")
    assert st == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["gpt", "embed"]
    assert all(m["object"] == "model" for m in body["data"])

    r = chat(d, temperature=0.7, vendor_extension={"keep": [1, "two", None]}, n=1)
    assert r.status == 200, r.body
    assert r.headers["X-Rhema-Upstream"] == "a"
    assert r.headers["X-Rhema-Attempts"] == "gpt@a 200"
    assert r.json()["choices"][0]["message"]["content"] == "echo: hello"
    got = a.requests[-1]
    assert got["path"] == "/v1/chat/completions"
    assert got["body"]["model"] == "fake-model"           # rewritten
    assert got["body"]["temperature"] == 0.7              # the rest untouched
    assert got["body"]["vendor_extension"] == {"keep": [1, "two", None]}
    assert got["body"]["messages"] == CHAT["messages"]
    assert got["headers"]["authorization"] == "Bearer sk-secret-123"
    assert got["headers"]["x-org"] == "acme"
    assert "sk-secret-123" not in d.log()                 # never logged

    r = chat(d, model=None)                               # default_model
    assert r.status == 200 and a.requests[-1]["body"]["model"] == "fake-model"

    r = d.request("POST", "/v1/completions", {"model": "gpt", "prompt": "say"})
    assert r.status == 200 and r.json()["object"] == "text_completion"
    assert a.requests[-1]["path"] == "/v1/completions"
    r = d.request("POST", "/v1/embeddings", {"model": "embed", "input": ["x", "y"]})
    assert r.status == 200 and len(r.json()["data"]) == 2
    assert a.requests[-1]["path"] == "/v1/embeddings"
    assert a.requests[-1]["body"]["model"] == "embed"     # upstream_model defaults to the name


def test_openai_error_shape(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], [{"name": "gpt"}])
    r = chat(d, model="nope")
    assert r.status == 404
    e = oai_error(r)
    assert e["code"] == "model_not_found" and e["param"] == "model" and "nope" in e["message"]
    r = chat(d, model=None)
    assert r.status == 400 and oai_error(r)["param"] == "model"
    r = d.request("POST", "/v1/chat/completions", b"{not json", {"Content-Type": "application/json"})
    assert r.status == 400 and oai_error(r)["code"] == "invalid_json"
    r = d.request("POST", "/v1/chat/completions", [1, 2])
    assert r.status == 400 and oai_error(r)["type"] == "invalid_request_error"
    r = chat(d, stream="yes")
    assert r.status == 400 and oai_error(r)["param"] == "stream"
    r = d.request("POST", "/v1/embeddings", {"model": "gpt", "input": "x", "stream": True})
    assert r.status == 400 and oai_error(r)["param"] == "stream"
    r = chat(d, model=5)
    assert r.status == 400 and oai_error(r)["param"] == "model"
    assert a.requests == []                              # none of these went upstream
    # a 4xx of the upstream is the request's own fault: passed through, no retry
    a.script({"status": 400})
    r = chat(d)
    assert r.status == 400 and len(a.requests) == 1
    assert r.headers["X-Rhema-Attempts"] == "gpt@a 400"


def test_gateway_off(daemon):
    r = daemon.request("GET", "/v1/models")
    assert r.status == 404 and oai_error(r)["code"] == "gateway_disabled"
    r = daemon.request("POST", "/v1/chat/completions", {"model": "x"})
    assert r.status == 404 and oai_error(r)["code"] == "gateway_disabled"


def test_retry_honours_retry_after(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], [{"name": "gpt"}])
    a.script({"status": 503, "retry_after": "1"})
    t0 = time.monotonic()
    r = chat(d)
    took = time.monotonic() - t0
    assert r.status == 200, r.body
    assert r.headers["X-Rhema-Attempts"] == "gpt@a 503 retry, gpt@a 200"
    assert len(a.requests) == 2
    assert took >= 0.95          # waited the upstream's Retry-After, not the 10 ms backoff

    # 429 every time: max_retries (2) retries, then the 429 with its Retry-After
    a.default({"status": 429, "retry_after": "0"})
    r = chat(d)
    assert r.status == 429
    assert oai_error(r)["code"] == "upstream_rate_limited"
    assert r.headers["Retry-After"] == "0"
    assert r.headers["X-Rhema-Attempts"] == "gpt@a 429 retry, gpt@a 429 retry, gpt@a 429"
    assert len(a.requests) == 5


def test_retry_budget_bounds_retries(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], [{"name": "gpt"}],
              "retries: { backoff_base_ms = 1; backoff_max_ms = 2; max_retries = 2;"
              " budget_percent = 0; budget_reserve = 3; };\n"
              "circuit_breaker: { failure_threshold = 1000; };")
    a.default({"status": 500})
    for _ in range(4):
        assert chat(d).status == 502
    # 4 first attempts and the reserve of 3 retries: not 4 x 3
    assert len(a.requests) == 7


def test_circuit_breaker(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], [{"name": "gpt"}],
              "enable_fallback = false;\n"
              "retries: { max_retries = 0; };\n"
              "circuit_breaker: { failure_threshold = 2; open_seconds = 1; };")
    a.default({"status": 500})
    assert chat(d).status == 502
    assert chat(d).status == 502
    assert len(a.requests) == 2
    r = chat(d)                                  # open: refused without a call
    assert r.status == 503 and oai_error(r)["code"] == "no_upstream_available"
    assert r.headers["X-Rhema-Attempts"] == "gpt@a breaker_open skip"
    assert len(a.requests) == 2
    time.sleep(1.1)
    a.default({})
    r = chat(d)                                  # half-open: the probe goes, succeeds
    assert r.status == 200 and len(a.requests) == 3
    assert chat(d).status == 200                 # closed again
    assert len(a.requests) == 4
    # a failed probe opens it again
    a.default({"status": 500})
    assert chat(d).status == 502 and chat(d).status == 502
    assert chat(d).status == 503
    time.sleep(1.1)
    assert chat(d).status == 502                 # the probe, failing
    assert len(a.requests) == 7
    assert chat(d).status == 503                 # open again at once
    assert len(a.requests) == 7


def test_fallback_chain(daemons, fake_openai):
    a, b = fake_openai("a"), fake_openai("b")
    ups = [{"name": "a", "base_url": a.url}, {"name": "b", "base_url": b.url}]
    models = [{"name": "gpt", "upstream": "a", "fallbacks": ["small"]},
              {"name": "small", "upstream": "b", "upstream_model": "small-v2"}]
    d = start(daemons, ups, models, "retries: { max_retries = 1; backoff_base_ms = 1; };")
    a.default({"status": 502})
    r = chat(d)
    assert r.status == 200, r.body
    assert r.headers["X-Rhema-Upstream"] == "b"
    assert r.headers["X-Rhema-Attempts"] == \
        "gpt@a 502 retry, gpt@a 502 fallback, small@b 200"
    assert b.requests[-1]["body"]["model"] == "small-v2"
    assert r.json()["upstream"] == "b"

    # a connect error (nothing listens) falls back too
    d2 = start(daemons, [{"name": "dead", "base_url": "http://127.0.0.1:9/v1"},
                         {"name": "b", "base_url": b.url}],
               [{"name": "gpt", "upstream": "dead", "fallbacks": ["small"]},
                {"name": "small", "upstream": "b"}],
               "retries: { max_retries = 0; backoff_base_ms = 1; };", name="d2")
    r = chat(d2)
    assert r.status == 200
    assert r.headers["X-Rhema-Attempts"] == "gpt@dead connect_error fallback, small@b 200"

    # enable_fallback = false: the model's own failure is the answer
    d3 = start(daemons, ups, models, "enable_fallback = false;\nretries: { max_retries = 0; };",
               name="d3")
    n = len(b.requests)
    r = chat(d3)
    assert r.status == 502 and oai_error(r)["code"] == "upstream_failed"
    assert len(b.requests) == n


def test_timeout(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url, "timeout_seconds": 1}],
              [{"name": "gpt"}], "retries: { max_retries = 0; backoff_base_ms = 1; };")
    a.script({"delay": 3})
    r = chat(d)
    assert r.status == 504 and oai_error(r)["code"] == "upstream_timeout"
    assert r.headers["X-Rhema-Attempts"] == "gpt@a timeout"


def test_balancing_priority_and_max_concurrent(daemons, fake_openai):
    a, b, c = fake_openai("a"), fake_openai("b"), fake_openai("c")
    d = start(daemons, [{"name": "a", "base_url": a.url, "max_concurrent": 1},
                        {"name": "b", "base_url": b.url},
                        {"name": "c", "base_url": c.url, "priority": 1}],
              [{"name": "gpt", "upstream": ["a", "b", "c"], "strategy": "round_robin"}])
    seen = [chat(d).headers["X-Rhema-Upstream"] for _ in range(6)]
    assert sorted(set(seen)) == ["a", "b"]       # the priority 0 tier, balanced
    assert c.requests == []
    # a holds one request; the second one goes elsewhere in its tier
    a.default({"delay": 1.5})
    b.default({"delay": 1.5})
    got = []

    def one():
        got.append(chat(d).headers.get("X-Rhema-Upstream"))
    ts = [threading.Thread(target=one) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert got.count("a") <= 1                   # max_concurrent = 1
    assert len(got) == 3 and all(got)
    # tier 0 failing: the next priority serves
    a.default({"status": 500})
    b.default({"status": 500})
    r = chat(d)
    assert r.status == 200 and r.headers["X-Rhema-Upstream"] == "c"


def check(tmp_path, text, env=None):
    p = tmp_path / "t.conf"
    p.write_text(text)
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        return run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_config_checks(tmp_path):
    ok = ai_config([{"name": "a", "base_url": "https://api.example.com/v1"}],
                   [{"name": "gpt", "upstream": "a"}])
    r = check(tmp_path, ok)
    assert r.returncode == 0, r.stderr
    bad = ai_config([{"name": "a", "base_url": "https://api.example.com/v1"}],
                    [{"name": "gpt", "upstream": ["a", "zz"], "fallbacks": ["nope"]}])
    r = check(tmp_path, bad)
    assert r.returncode != 0
    assert "t.conf:" in r.stderr and "names no upstream" in r.stderr and "'zz'" in r.stderr
    assert "fallbacks[0]' names no model" in r.stderr
    r = check(tmp_path, ai_config([{"name": "a", "base_url": "ftp://x"}], [{"name": "gpt"}]))
    assert r.returncode != 0 and "http:// or https://" in r.stderr
    r = check(tmp_path, ai_config([{"name": "a", "base_url": "http://x", "api_key_env": "RHEMA_NO_SUCH_VAR"}],
                                  [{"name": "gpt"}]))
    assert r.returncode != 0 and "RHEMA_NO_SUCH_VAR is not set" in r.stderr
    r = check(tmp_path, ai_config([{"name": "a", "base_url": "http://x"}],
                                  [{"name": "gpt", "strategy": "no_such_strategy"}]))
    assert r.returncode != 0 and "no_such_strategy" in r.stderr
    r = check(tmp_path, ai_config([{"name": "a", "base_url": "http://x"}],
                                  [{"name": "gpt", "upstream": 5}]))
    assert r.returncode != 0 and "a string or a list of strings" in r.stderr
    # what is still not implemented stays refused
    r = check(tmp_path, ai_config([{"name": "a", "base_url": "http://x"}],
                                  [{"name": "gpt", "max_tokens": 100}]))
    assert r.returncode != 0 and "max_tokens: not implemented" in r.stderr
    r = check(tmp_path, memory_config() + "monitoring: { sample_interval_seconds = 5; };")
    assert r.returncode != 0 and "not implemented" in r.stderr


def test_drain_waits_for_upstream(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], [{"name": "gpt"}])
    a.script({"delay": 1})
    got = []
    t = threading.Thread(target=lambda: got.append(chat(d)))
    t.start()
    assert wait_until(lambda: len(a.requests) == 1, 10) is True
    d.send(signal.SIGTERM)
    t.join(20)
    assert got and got[0].status == 200, got and got[0].body   # answered, not dropped
    assert d.wait(20) == 0
