"""
The AI gateway's response cache (issue 10 item 5, doc/ai-gateway.md "The
response cache") against the fake OpenAI upstream, counting what reaches
it: hits (Cache-Status, Age), misses on other bodies, the caller's scope
(API keys, client addresses), Cache-Control no-store and no-cache, TTL
expiry, the LRU bounded by bytes, max_entry_bytes, single flight, errors
never cached, and the configuration checks of `rhemad -t`.
"""

import http.client
import signal
import threading
import time

from conftest import PLUGIN_DIR, run_rhemad, wait_until
from test_ai_gateway import ai_config, chat, start
from test_auth import auth_config, bearer, new_key

UP = [{"name": "a"}]
MODELS = [{"name": "gpt", "upstream": "a", "upstream_model": "fake-model"}]


def cached(daemons, fake_openai, caching="", extra="", config_wrap=None):
    a = fake_openai("a")
    ups = [dict(UP[0], base_url=a.url)]
    text = "caching: { enabled = true; " + caching + " };\n" + extra
    if config_wrap:
        d = daemons(config=config_wrap(ai_config(ups, MODELS, text)))
        d.start()
    else:
        d = start(daemons, ups, MODELS, text)
    return a, d


def upstream_chats(a):
    return sum(1 for r in a.requests if r["path"].endswith("/chat/completions"))


def test_hit_and_miss(daemons, fake_openai):
    a, d = cached(daemons, fake_openai, extra='default_model = "gpt";')
    r1 = chat(d)
    assert r1.status == 200, r1.body
    assert r1.headers["Cache-Status"] == "rhema; fwd=miss; stored"
    assert "Age" not in r1.headers
    r2 = chat(d)
    assert r2.status == 200
    assert r2.headers["Cache-Status"] == "rhema; hit"
    assert int(r2.headers["Age"]) >= 0
    assert r2.body == r1.body                           # the stored bytes, "created" included
    assert r2.headers["X-Rhema-Upstream"] == "a"
    assert upstream_chats(a) == 1
    # the same question, its keys in another order and without the default model: a hit
    r3 = d.request("POST", "/v1/chat/completions",
                   '{"messages": [{"content": "hello", "role": "user"}]}')
    assert r3.headers["Cache-Status"] == "rhema; hit" and upstream_chats(a) == 1
    # another body, another route: misses
    r4 = chat(d, temperature=0.5)
    assert r4.headers["Cache-Status"] == "rhema; fwd=miss; stored" and upstream_chats(a) == 2
    r5 = d.request("POST", "/v1/completions", {"model": "gpt", "prompt": "hello"})
    assert r5.status == 200 and r5.headers["Cache-Status"] == "rhema; fwd=miss; stored"
    r6 = d.request("POST", "/v1/completions", {"model": "gpt", "prompt": "hello"})
    assert r6.headers["Cache-Status"] == "rhema; hit"
    e1 = d.request("POST", "/v1/embeddings", {"model": "gpt", "input": "x"})
    e2 = d.request("POST", "/v1/embeddings", {"model": "gpt", "input": "x"})
    assert e1.headers["Cache-Status"] == "rhema; fwd=miss; stored"
    assert e2.headers["Cache-Status"] == "rhema; hit" and e2.body == e1.body
    assert sum(1 for r in a.requests if r["path"].endswith("/embeddings")) == 1
    # the counters on GET /metrics
    m = d.request("GET", "/metrics").body.decode()
    assert 'rhema_ai_cache_lookups_total{result="hit"} 4' in m, m
    assert 'rhema_ai_cache_lookups_total{result="miss"} 4' in m
    assert "rhema_ai_cache_stores_total 4" in m and "rhema_ai_cache_entries 4" in m


def test_cache_off_by_default(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], MODELS)
    assert "Cache-Status" not in chat(d).headers
    chat(d)
    assert upstream_chats(a) == 2


def test_tenant_isolation_by_key(daemons, fake_openai):
    k1, g1 = new_key("one", "user")
    k2, g2 = new_key("two", "user")
    wrap = lambda base: auth_config(base, [g1, g2], {"user": ["ai:use", "ai:read"]})
    a, d = cached(daemons, fake_openai, config_wrap=wrap)
    r1 = chat(d, headers=bearer(k1))
    assert r1.status == 200, r1.body
    assert r1.headers["Cache-Status"] == "rhema; fwd=miss; stored"
    r2 = chat(d, headers=bearer(k2))                    # same body, another key
    assert r2.headers["Cache-Status"] == "rhema; fwd=miss; stored"
    assert upstream_chats(a) == 2
    assert chat(d, headers=bearer(k1)).headers["Cache-Status"] == "rhema; hit"
    assert chat(d, headers=bearer(k2)).headers["Cache-Status"] == "rhema; hit"
    assert upstream_chats(a) == 2


def test_tenant_isolation_by_address(daemons, fake_openai):
    a, d = cached(daemons, fake_openai)

    def from_addr(src):
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10,
                                       source_address=(src, 0))
        try:
            return d.request("POST", "/v1/chat/completions",
                             dict(model="gpt", messages=[{"role": "user", "content": "hi"}]),
                             conn=c)
        finally:
            c.close()

    assert from_addr("127.0.0.1").headers["Cache-Status"] == "rhema; fwd=miss; stored"
    assert from_addr("127.0.0.2").headers["Cache-Status"] == "rhema; fwd=miss; stored"
    assert from_addr("127.0.0.2").headers["Cache-Status"] == "rhema; hit"
    assert upstream_chats(a) == 2


def test_no_store_and_no_cache(daemons, fake_openai):
    a, d = cached(daemons, fake_openai)
    r = chat(d, headers={"Cache-Control": "no-store"})
    assert r.headers["Cache-Status"] == "rhema; fwd=bypass"
    r = chat(d, headers={"Cache-Control": "no-store"})
    assert r.headers["Cache-Status"] == "rhema; fwd=bypass"
    assert upstream_chats(a) == 2
    r = chat(d)                                         # nothing was stored by the bypasses
    assert r.headers["Cache-Status"] == "rhema; fwd=miss; stored"
    first = r.body
    assert upstream_chats(a) == 3
    r = chat(d, headers={"Cache-Control": "max-age=0, No-Store"})  # other directives around it
    assert r.headers["Cache-Status"] == "rhema; fwd=bypass" and upstream_chats(a) == 4
    # no-cache: upstream again, and the new answer replaces the stored one
    a.default({"body": {"id": "fresh", "object": "chat.completion", "choices": []}})
    r = chat(d, headers={"Cache-Control": "no-cache"})
    assert r.headers["Cache-Status"] == "rhema; fwd=request; stored"
    assert upstream_chats(a) == 5 and r.json()["id"] == "fresh"
    r = chat(d)
    assert r.headers["Cache-Status"] == "rhema; hit" and r.json()["id"] == "fresh"
    assert r.body != first and upstream_chats(a) == 5


def test_ttl_expiry(daemons, fake_openai):
    a, d = cached(daemons, fake_openai, "ttl_seconds = 1;")
    assert chat(d).headers["Cache-Status"] == "rhema; fwd=miss; stored"
    t0 = time.monotonic()

    def refetched():
        r = chat(d)
        if r.headers["Cache-Status"] == "rhema; hit":
            assert int(r.headers["Age"]) <= 1           # never served past its TTL
            return False
        assert r.headers["Cache-Status"] == "rhema; fwd=miss; stored"
        return True

    assert wait_until(refetched, 10, step=0.1)
    assert time.monotonic() - t0 >= 1.0                 # not before the TTL
    assert upstream_chats(a) == 2


def big_chat(d, letter, n=1500, **kw):
    return d.request("POST", "/v1/chat/completions",
                     {"model": "gpt", "messages": [{"role": "user", "content": letter * n}]}, **kw)


def test_lru_eviction_by_bytes(daemons, fake_openai):
    # each answer is ~1.9 kB with its entry: 4096 bytes hold two
    a, d = cached(daemons, fake_openai, "max_size_bytes = 4096; max_entry_bytes = 4096;")
    for letter in "ABC":
        r = big_chat(d, letter)
        assert r.headers["Cache-Status"] == "rhema; fwd=miss; stored", r.headers
    assert upstream_chats(a) == 3
    assert big_chat(d, "B").headers["Cache-Status"] == "rhema; hit"
    assert big_chat(d, "C").headers["Cache-Status"] == "rhema; hit"
    assert upstream_chats(a) == 3
    assert big_chat(d, "A").headers["Cache-Status"] == "rhema; fwd=miss; stored"  # evicted
    assert upstream_chats(a) == 4


def test_max_entry_bytes(daemons, fake_openai):
    a, d = cached(daemons, fake_openai, "max_entry_bytes = 1024;")
    r = big_chat(d, "Z")
    assert r.status == 200
    assert r.headers["Cache-Status"] == "rhema; fwd=miss; detail=too-large"
    assert big_chat(d, "Z").headers["Cache-Status"] == "rhema; fwd=miss; detail=too-large"
    assert upstream_chats(a) == 2
    assert big_chat(d, "Y", n=10).headers["Cache-Status"] == "rhema; fwd=miss; stored"
    assert big_chat(d, "Y", n=10).headers["Cache-Status"] == "rhema; hit"


def test_errors_not_cached(daemons, fake_openai):
    a, d = cached(daemons, fake_openai)
    a.script({"status": 400})
    r = chat(d)
    assert r.status == 400
    assert r.headers["Cache-Status"] == "rhema; fwd=miss; fwd-status=400"
    r = chat(d)
    assert r.status == 200 and r.headers["Cache-Status"] == "rhema; fwd=miss; stored"
    assert upstream_chats(a) == 2
    # a gateway error (unknown model) is not stored either
    assert chat(d, model="nope").status == 404
    r = chat(d, model="nope")
    assert r.status == 404 and "stored" not in r.headers["Cache-Status"]


def concurrent(d, n, body, headers=None):
    out = [None] * n
    go = threading.Event()

    def one(i):
        go.wait(10)
        out[i] = d.request("POST", "/v1/chat/completions", body, headers=headers, timeout=30)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    go.set()
    for t in ts:
        t.join(40)
    return out


def test_single_flight(daemons, fake_openai):
    a, d = cached(daemons, fake_openai)
    a.default({"delay": 1.5})
    body = {"model": "gpt", "messages": [{"role": "user", "content": "once"}]}
    rs = concurrent(d, 10, body)
    assert all(r is not None and r.status == 200 for r in rs), [r and r.status for r in rs]
    assert upstream_chats(a) == 1
    assert len({r.body for r in rs}) == 1               # ten identical answers
    states = sorted(r.headers["Cache-Status"] for r in rs)
    # the leader stored it; the others waited for it (or came after it: hits)
    assert states.count("rhema; fwd=miss; stored") == 1
    assert all(s in ("rhema; fwd=miss; collapsed", "rhema; hit") for s in states
               if s != "rhema; fwd=miss; stored")


def test_single_flight_error_shared(daemons, fake_openai):
    a, d = cached(daemons, fake_openai)
    a.default({"delay": 1.5, "status": 400})
    body = {"model": "gpt", "messages": [{"role": "user", "content": "bad"}]}
    rs = concurrent(d, 6, body)
    assert all(r is not None and r.status == 400 for r in rs)
    # the followers that joined the flight got the leader's error, not six upstream calls
    collapsed = sum(1 for r in rs if r.headers["Cache-Status"] == "rhema; fwd=miss; collapsed")
    assert upstream_chats(a) == 6 - collapsed and collapsed >= 1
    a.default({})
    assert chat(d, model="gpt", messages=body["messages"]).headers["Cache-Status"] == \
        "rhema; fwd=miss; stored"                       # the error was not stored


def test_config_checks(tmp_path):
    base = ai_config([{"name": "a", "base_url": "http://127.0.0.1:9/v1"}], MODELS,
                     "caching: { enabled = true; max_size_bytes = 4096; max_entry_bytes = 8192; };")
    p = tmp_path / "c.conf"
    p.write_text(base)
    r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0 and "max_entry_bytes" in r.stderr and "max_size_bytes" in r.stderr
    for bad, word in (("max_size_bytes = 100;", "max_size_bytes"),
                      ("ttl_seconds = 0;", "ttl_seconds"),
                      ("max_entry_bytes = \"x\";", "max_entry_bytes")):
        p.write_text(ai_config([{"name": "a", "base_url": "http://127.0.0.1:9/v1"}], MODELS,
                               "caching: { enabled = true; " + bad + " };"))
        r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
        assert r.returncode != 0 and word in r.stderr, (bad, r.stderr)
    p.write_text(ai_config([{"name": "a", "base_url": "http://127.0.0.1:9/v1"}], MODELS,
                           "caching: { enabled = true; ttl_seconds = 60; max_size_bytes = 1048576;"
                           " max_entry_bytes = 65536; max_entries = 100; };"))
    r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    assert r.returncode == 0, r.stderr


def test_drain_answers_waiters(daemons, fake_openai):
    """SIGTERM while a flight has waiters (on both workers): every one is answered, then exit 0."""
    a, d = cached(daemons, fake_openai)
    a.default({"delay": 1.5})
    body = {"model": "gpt", "messages": [{"role": "user", "content": "drain"}]}
    got = []
    t = threading.Thread(target=lambda: got.extend(concurrent(d, 4, body)))
    t.start()
    assert wait_until(lambda: upstream_chats(a) == 1, 10) is True
    time.sleep(0.2)  # the others reach rhemad (if one is late it leads a new flight: still 200)
    d.send(signal.SIGTERM)
    t.join(30)
    assert len(got) == 4 and all(r is not None and r.status == 200 for r in got)
    assert len({r.body for r in got}) == 1 and upstream_chats(a) == 1  # the one answer, shared
    assert d.wait(20) == 0
