"""
Token limits and usage of the AI gateway (issue 10 item 6, doc/ai-gateway.md
"Limits and usage"): requests per minute and tokens per minute / per day
per party (API key, or client address) and model, refused with 429 before
the upstream is called; usage charged from the upstream's "usage", kept in
the storage backend (shared by the nodes of a cluster) and reported by
GET /v1/usage.
"""

import json
import threading
import time

import pytest

from conftest import memory_config, require_plugin, sqlite_config
from test_auth import auth_config, bearer, new_key

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def usage_body(total, prompt=60, completion=40):
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": total}}


def config(fake, limits, models=None, base=None):
    models = models or [{"name": "gpt"}]
    mods = ", ".join("{ " + " ".join(f"{k} = {json.dumps(v)};" for k, v in m.items())
                     + ' upstream = "a"; }' for m in models)
    return ((base if base is not None else memory_config())
            + 'ai_service: {\n  enabled = true;\n  default_model = "gpt";\n'
            + f'  upstreams = ( {{ name = "a"; base_url = "{fake.url}"; }} );\n'
            + f"  models = ( {mods} );\n"
            + "  retries: { backoff_base_ms = 10; backoff_max_ms = 50; };\n"
            + f"  limits: {{ enabled = true; {limits} }};\n}};\n")


def chat(d, model="gpt", headers=None):
    body = dict(CHAT)
    if model:
        body["model"] = model
    return d.request("POST", "/v1/chat/completions", body, headers=headers)


def away_from_minute_edge():
    """Token buckets are UTC minutes: keep a sequence of requests inside one (bounded wait)."""
    s = time.time() % 60
    if s > 50:
        time.sleep(60.5 - s)


def oai_error(r):
    e = r.json()
    assert set(e) == {"error"} and set(e["error"]) == {"message", "type", "param", "code"}, e
    return e["error"]


def test_tokens_per_minute_refused_before_the_upstream(daemons, fake_openai):
    a = fake_openai("a")
    a.default({"body": usage_body(100)})
    d = daemons(config=config(a, "tokens_per_minute = 150;")).start()
    away_from_minute_edge()
    # the rule: refused when the minute's tokens already reached the allowance
    r1 = chat(d)
    assert r1.status == 200, r1.body
    assert r1.headers["RateLimit-Policy"] == '"ai_tokens_minute";q=150;w=60'
    assert r1.headers["RateLimit"].startswith('"ai_tokens_minute";r=150;t=')
    r2 = chat(d)  # 100 used < 150: let through, and charged 100 more
    assert r2.status == 200, r2.body
    assert r2.headers["RateLimit"].startswith('"ai_tokens_minute";r=50;')
    r3 = chat(d)  # 200 used >= 150
    assert r3.status == 429, r3.body
    e = oai_error(r3)
    assert e["type"] == "rate_limit_error" and e["code"] == "rate_limit_exceeded"
    assert "tokens per minute" in e["message"] and "'gpt'" in e["message"]
    assert 1 <= int(r3.headers["Retry-After"]) <= 60
    assert r3.headers["RateLimit"].startswith('"ai_tokens_minute";r=0;')
    assert len(a.requests) == 2  # the refused request never went upstream
    assert chat(d).status == 429 and len(a.requests) == 2


def test_tokens_per_day_and_embeddings(daemons, fake_openai):
    a = fake_openai("a")
    d = daemons(config=config(a, "tokens_per_day = 3;")).start()
    # the fake's embeddings report 2 tokens for two inputs (usage without completion_tokens)
    body = {"model": "gpt", "input": ["a", "b"]}
    assert d.request("POST", "/v1/embeddings", body).status == 200
    assert d.request("POST", "/v1/embeddings", body).status == 200
    r = d.request("POST", "/v1/embeddings", body)
    assert r.status == 429 and "tokens per day" in oai_error(r)["message"]
    assert r.headers["RateLimit-Policy"] == '"ai_tokens_day";q=3;w=86400'
    assert len(a.requests) == 2
    s, _, u = d.json("GET", "/v1/usage")
    assert s == 200
    assert u["totals"] == {"requests": 2, "prompt_tokens": 4, "completion_tokens": 0,
                           "total_tokens": 4}, u


def test_requests_per_minute_and_per_model_override(daemons, fake_openai):
    a = fake_openai("a")
    d = daemons(config=config(a, "requests_per_minute = 2;",
                              [{"name": "gpt"}, {"name": "big", "requests_per_minute": 4},
                               {"name": "free", "requests_per_minute": 0}])).start()
    assert [chat(d).status for _ in range(3)] == [200, 200, 429]
    r = chat(d)
    assert r.status == 429 and "requests per minute" in oai_error(r)["message"]
    assert r.headers["RateLimit-Policy"] == '"ai_requests_minute";q=2;w=60'
    assert int(r.headers["Retry-After"]) >= 1
    # per model: its own allowance, counted apart
    assert [chat(d, "big").status for _ in range(5)] == [200] * 4 + [429]
    # 0: no limit for that model
    assert [chat(d, "free").status for _ in range(6)] == [200] * 6
    assert "RateLimit" not in chat(d, "free").headers
    # the default model is counted as itself
    assert chat(d, model=None).status == 429
    assert len(a.requests) == 2 + 4 + 7


def test_per_key_isolation_and_usage_permissions(daemons, fake_openai):
    a = fake_openai("a")
    a.default({"body": usage_body(100, 70, 30)})
    k1, k2, adm = new_key("one", "user"), new_key("two", "user"), new_key("adm", "admin")
    roles = {"user": ["ai:use", "ai:read"], "admin": ["*"]}
    base = auth_config(memory_config(), [k1[1], k2[1], adm[1]], roles)
    d = daemons(config=config(a, "tokens_per_minute = 150;", base=base)).start()
    away_from_minute_edge()
    h1, h2, ha = bearer(k1[0]), bearer(k2[0]), bearer(adm[0])
    assert [chat(d, headers=h1).status for _ in range(3)] == [200, 200, 429]
    # the other key has its own allowance
    assert [chat(d, headers=h2).status for _ in range(3)] == [200, 200, 429]
    assert len(a.requests) == 4

    s, _, mine = d.json("GET", "/v1/usage", headers=h1)
    assert s == 200, mine
    id1 = mine["id"]
    assert mine["party"] == "key" and len(id1) == 12
    assert mine["totals"] == {"requests": 2, "prompt_tokens": 140, "completion_tokens": 60,
                              "total_tokens": 200}
    assert mine["models"] == {"gpt": mine["totals"]}
    assert len(mine["buckets"]) == 1 and mine["buckets"][0]["start"] % 3600 == 0
    # another key's usage needs ai:admin
    s, _, other = d.json("GET", "/v1/usage", headers=h2)
    assert s == 200 and other["id"] != id1
    s, _, e = d.json("GET", f"/v1/usage?key={id1}", headers=h2)
    assert s == 403 and "ai:admin" in e["error"]["message"]
    s, _, seen = d.json("GET", f"/v1/usage?key={id1}&model=gpt", headers=ha)
    assert s == 200 and seen["totals"] == mine["totals"]
    # one's own key named explicitly is fine
    assert d.json("GET", f"/v1/usage?key={id1}", headers=h1)[0] == 200
    # no admin usage of its own
    assert d.json("GET", "/v1/usage", headers=ha)[2]["totals"]["requests"] == 0


def test_usage_query_range_and_bad_parameters(daemons, fake_openai):
    a = fake_openai("a")
    d = daemons(config=config(a, "", [{"name": "gpt"}, {"name": "other"}])).start()
    for m in ("gpt", "gpt", "other"):
        assert chat(d, m).status == 200
    s, _, u = d.json("GET", "/v1/usage")
    assert s == 200 and u["party"] == "address" and u["id"] == "127.0.0.1"
    # the fake reports 3 + 2 = 5 tokens a chat
    assert u["totals"] == {"requests": 3, "prompt_tokens": 9, "completion_tokens": 6,
                           "total_tokens": 15}
    assert u["models"]["gpt"]["total_tokens"] == 10 and u["models"]["other"]["requests"] == 1
    assert d.json("GET", "/v1/usage?model=other")[2]["totals"]["requests"] == 1
    now = int(time.time())
    # a range that ends before this hour holds nothing
    old = d.json("GET", f"/v1/usage?from={now - 10 * 86400}&to={now - 7200}")[2]
    assert old["totals"]["requests"] == 0 and old["buckets"] == []
    assert d.json("GET", f"/v1/usage?from={now - 60}&to={now + 60}")[2]["totals"]["requests"] == 3
    for q in ("from=abc", "to=-1", f"from={now}&to={now - 10}", "key=", "model=",
              "key=" + "x" * 40):
        s, _, e = d.json("GET", "/v1/usage?" + q)
        assert s == 400, (q, e)


def test_usage_off_and_config_checks(daemons, fake_openai, tmp_path):
    a = fake_openai("a")
    d = daemons(config=config(a, "").replace("limits: { enabled = true;",
                                             "limits: { enabled = false;")).start()
    assert d.json("GET", "/v1/usage")[0] == 404
    assert chat(d).status == 200
    from conftest import PLUGIN_DIR, run_rhemad
    p = tmp_path / "good.conf"
    p.write_text(config(a, "tokens_per_minute = 5;"))
    r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    assert r.returncode == 0, r.stderr  # so that the refusals below are for their key
    for bad, key in (("tokens_per_minute = -1;", "ai_service.limits.tokens_per_minute"),
                     ("requests_per_minute = 2000000;", "ai_service.limits.requests_per_minute"),
                     ("usage_retention_days = 0;", "ai_service.limits.usage_retention_days"),
                     ("tokens_per_hour = 5;", "ai_service.limits.tokens_per_hour")):
        p = tmp_path / "bad.conf"
        p.write_text(config(a, bad))
        r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
        assert r.returncode != 0, bad
        assert key in r.stderr, (bad, r.stderr)
    # a model's own limit with the limits off would do nothing: refused, named
    p = tmp_path / "off.conf"
    p.write_text(config(a, "", models=[{"name": "gpt", "tokens_per_day": 100}])
                 .replace("limits: { enabled = true;", "limits: { enabled = false;"))
    r = run_rhemad(["-t", "-c", str(p), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0
    assert "ai_service.models[0].tokens_per_day: a model's limit acts only with " \
           "ai_service.limits.enabled = true" in r.stderr, r.stderr


def two_nodes_count_together(daemons, a, base):
    a.default({"body": usage_body(7, 4, 3)})
    cfg = config(a, "", base=base)
    n1 = daemons("n1", config=cfg).start()
    n2 = daemons("n2", config=cfg).start()
    per_thread, statuses = 10, []
    lock = threading.Lock()

    def run(node):
        for _ in range(per_thread):
            s = chat(node).status
            with lock:
                statuses.append(s)
    threads = [threading.Thread(target=run, args=(n,)) for n in (n1, n2, n1, n2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 40
    # no lost update: every charge of both nodes is in the shared buckets, seen from either
    for node in (n1, n2):
        s, _, u = node.json("GET", "/v1/usage")
        assert s == 200
        assert u["totals"] == {"requests": 40, "prompt_tokens": 160, "completion_tokens": 120,
                               "total_tokens": 280}, u


def test_two_nodes_on_one_sqlite_file_count_together(daemons, fake_openai, tmp_path):
    require_plugin("sqlite")
    two_nodes_count_together(daemons, fake_openai("a"), sqlite_config(tmp_path / "shared.db"))


def test_two_nodes_on_one_redis_count_together(daemons, fake_openai, redis):
    _, port = redis
    two_nodes_count_together(
        daemons, fake_openai("a"),
        'persistence: { backend = "redis"; redis = { host = "127.0.0.1"; '
        f'port = {port}; password = "s3cret pass"; timeout_ms = 2000; }}; }};\n')


def test_two_nodes_share_the_token_allowance(daemons, fake_openai, tmp_path):
    require_plugin("sqlite")
    a = fake_openai("a")
    a.default({"body": usage_body(100)})
    cfg = config(a, "tokens_per_day = 250;", base=sqlite_config(tmp_path / "shared.db"))
    n1 = daemons("n1", config=cfg).start()
    n2 = daemons("n2", config=cfg).start()
    assert chat(n1).status == 200
    assert chat(n2).status == 200
    assert chat(n1).status == 200  # 200 < 250
    assert chat(n2).status == 429 and chat(n1).status == 429
    assert len(a.requests) == 3


def test_streams_are_charged_at_their_end(daemons, fake_openai):
    """A stream without a "usage" event: the estimate (a token per 4 bytes of the
    request body and of what was streamed); then refused like any request."""
    a = fake_openai("a")
    d = daemons(config=config(a, "tokens_per_day = 10;")).start()
    body = dict(CHAT, model="gpt", stream=True)
    r = d.request("POST", "/v1/chat/completions", body)
    assert r.status == 200 and b"[DONE]" in r.body, r.body
    s, _, u = d.json("GET", "/v1/usage")
    assert s == 200
    t = u["totals"]
    assert t["requests"] == 1, u
    assert t["prompt_tokens"] > 0, u
    assert t["completion_tokens"] >= len(r.body) // 4 - 1, (u, len(r.body))
    assert t["total_tokens"] == t["prompt_tokens"] + t["completion_tokens"] >= 10
    r = d.request("POST", "/v1/chat/completions", body)
    assert r.status == 429 and "tokens per day" in oai_error(r)["message"]
    assert len(a.requests) == 1


def test_cache_hits_count_as_requests_without_tokens(daemons, fake_openai):
    a = fake_openai("a")
    a.default({"body": usage_body(100)})
    conf = config(a, "tokens_per_minute = 1000;").replace(
        "  limits:", "  caching: { enabled = true; };\n  limits:")
    d = daemons(config=conf).start()
    away_from_minute_edge()
    r1, r2 = chat(d), chat(d)
    assert r1.status == 200 and r2.status == 200
    assert r2.headers["Cache-Status"] == "rhema; hit"
    assert len(a.requests) == 1
    s, _, u = d.json("GET", "/v1/usage")
    assert s == 200
    assert u["totals"] == {"requests": 2, "prompt_tokens": 60, "completion_tokens": 40,
                           "total_tokens": 100}, u
