"""
Streaming through the AI gateway (issue 10 item 4, doc/ai-gateway.md
"Streaming"): server-sent events passed through as they arrive, fallback
before the first byte (a 5xx, a cut before the first event, the
first-token deadline), `event: error` and no [DONE] after it (a cut, a
stall past the deadline, a malformed event), a client that leaves
cancelling the upstream request (streaming or not), and a slow reader
pausing the upstream instead of growing rhemad's buffers.
"""

import json
import socket

from test_ai_gateway import CHAT, start
from conftest import wait_until


def open_stream(d, model="gpt", path="/v1/chat/completions", **extra):
    """POST a streaming request on a fresh connection; (connection, response)."""
    body = dict(CHAT, model=model, stream=True, **extra)
    if path == "/v1/completions":
        body = {"model": model, "prompt": "hi", "stream": True}
    c = d.connection(timeout=30)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return c, c.getresponse()


def next_event(r):
    """The next event's lines (without the blank line), or None at the end of the body."""
    lines = []
    while True:
        line = r.readline()
        if not line:
            return lines or None
        line = line.rstrip(b"\r\n")
        if not line:
            if lines:
                return lines
            continue
        lines.append(line.decode())


def all_events(r):
    out = []
    while (ev := next_event(r)) is not None:
        out.append(ev)
    return out


def data_of(ev):
    return "\n".join(l[5:].lstrip(" ") for l in ev if l.startswith("data:"))


def assert_error_end(events, code):
    """The stream ended with `event: error` (OpenAI's error shape) and without [DONE]."""
    assert events, "no event at all"
    last = events[-1]
    assert last[0] == "event: error", events
    err = json.loads(data_of(last))
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["code"] == code, err
    assert all(data_of(e) != "[DONE]" for e in events)
    return err


def tokens(events):
    out = []
    for e in events:
        d = data_of(e)
        if d and d != "[DONE]" and e[0] != "event: error":
            out.append(json.loads(d)["choices"][0]["delta"]["content"])
    return out


def test_stream_in_order_and_as_it_arrives(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}],
              [{"name": "gpt", "upstream": "a", "upstream_model": "fake-model"}])
    a.default({"chunks": 5, "hold_after": 2})
    c, r = open_stream(d)
    try:
        assert r.status == 200
        assert r.getheader("Content-Type").startswith("text/event-stream")
        assert r.getheader("X-Rhema-Upstream") == "a"
        assert r.getheader("X-Rhema-Attempts") == "gpt@a 200"
        first = [next_event(r), next_event(r)]
        # the client has two events while the upstream holds the third: nothing buffered whole
        assert a.sent == 2
        assert tokens(first) == ["tok0 ", "tok1 "]
        a.release()
        rest = all_events(r)
    finally:
        c.close()
    assert tokens(first + rest) == [f"tok{i} " for i in range(5)]
    assert data_of(rest[-1]) == "[DONE]"
    # the upstream's events byte for byte: its own model name, its extra fields
    ev = json.loads(data_of(first[0]))
    assert ev["model"] == "fake-model" and ev["upstream"] == "a"
    assert a.requests[-1]["body"]["stream"] is True
    assert a.requests[-1]["body"]["model"] == "fake-model"

    # /v1/completions streams too
    a.default({"chunks": 2})
    c, r = open_stream(d, path="/v1/completions")
    try:
        assert r.status == 200
        events = all_events(r)
    finally:
        c.close()
    assert data_of(events[-1]) == "[DONE]" and len(events) == 3
    assert a.requests[-1]["path"] == "/v1/completions"


def test_stream_fallback_before_the_first_byte(daemons, fake_openai):
    a, b = fake_openai("a"), fake_openai("b")
    d = start(daemons, [{"name": "a", "base_url": a.url, "priority": 0},
                        {"name": "b", "base_url": b.url, "priority": 1}],
              [{"name": "gpt", "upstream": ["a", "b"], "first_token_timeout_seconds": 1},
               {"name": "solo", "upstream": "a", "fallbacks": ["alt"]},
               {"name": "alt", "upstream": "b"}],
              "retries: { max_retries = 1; backoff_base_ms = 10; backoff_max_ms = 20; };\n"
              "circuit_breaker: { failure_threshold = 100; };")
    b.default({"chunks": 2})
    cases = [({"status": 500}, "gpt@a 500 retry, gpt@b 200"),
             ({"cut_after": 0}, "gpt@a io_error retry, gpt@b 200"),
             ({"malformed_at": 0}, "gpt@a malformed_event retry, gpt@b 200"),
             ({"chunks": 0, "delay": 3}, "gpt@a first_token_timeout retry, gpt@b 200")]
    for action, trail in cases:
        a.script(action)
        c, r = open_stream(d)
        try:
            assert r.status == 200, (action, r.read())
            assert r.getheader("X-Rhema-Upstream") == "b", action
            assert r.getheader("X-Rhema-Attempts") == trail
            events = all_events(r)
        finally:
            c.close()
        assert tokens(events) == ["tok0 ", "tok1 "], action
        assert data_of(events[-1]) == "[DONE]"
    # every upstream of the model failed: the next model of `fallbacks`
    a.script({"status": 503}, {"status": 503})
    c, r = open_stream(d, model="solo")
    try:
        assert r.status == 200
        assert r.getheader("X-Rhema-Attempts") == "solo@a 503 retry, solo@a 503 fallback, alt@b 200"
        assert data_of(all_events(r)[-1]) == "[DONE]"
    finally:
        c.close()
    # nothing works: the error is an ordinary OpenAI error reply, not a stream
    a.script({"status": 503}, {"status": 503})
    b.script({"status": 500}, {"status": 500})
    c, r = open_stream(d, model="solo")
    try:
        assert r.status == 502
        e = json.loads(r.read())["error"]
        assert e["code"] == "upstream_failed"
    finally:
        c.close()
    # a 4xx of the upstream is the answer, as it is
    a.script({"status": 400})
    c, r = open_stream(d)
    try:
        assert r.status == 400
        assert r.getheader("X-Rhema-Attempts") == "gpt@a 400"
        assert "error" in json.loads(r.read())
    finally:
        c.close()


def test_stream_error_event_after_the_first_byte(daemons, fake_openai):
    a, b = fake_openai("a"), fake_openai("b")
    d = start(daemons, [{"name": "a", "base_url": a.url, "priority": 0},
                        {"name": "b", "base_url": b.url, "priority": 1}],
              [{"name": "gpt", "upstream": ["a", "b"], "stall_timeout_seconds": 1}])
    before = d.log_size()
    for action, code, good in [({"chunks": 4, "cut_after": 2}, "upstream_stream_cut", 2),
                               ({"chunks": 4, "malformed_at": 1}, "upstream_malformed_event", 1),
                               ({"chunks": 4, "stall_after": 3}, "upstream_stream_stalled", 3)]:
        a.script(action)
        c, r = open_stream(d)
        try:
            assert r.status == 200
            events = all_events(r)
        finally:
            c.close()
        assert tokens(events) == [f"tok{i} " for i in range(good)], action
        err = assert_error_end(events, code)
        assert err["error"]["type"] == "upstream_error"
        assert not b.requests  # no fallback once the client has bytes
    # the stalled upstream saw rhemad close its connection
    assert wait_until(lambda: a.closed == 1, 10)
    log = d.log()[before:]
    assert log.count("ended with an error event") == 3
    # and counted on /metrics, by reason
    text = d.request("GET", "/metrics").body.decode()
    for reason in ("cut", "malformed", "stalled"):
        assert f'rhema_ai_stream_errors_total{{reason="{reason}"}} 1' in text, reason
    assert "rhema_ai_streams_total 3" in text


def test_client_disconnect_cancels_the_upstream(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], [{"name": "gpt", "upstream": "a"}],
              "request_timeout_seconds = 120;")
    # streaming: the client leaves after the first event, the upstream stalls
    a.script({"chunks": 5, "stall_after": 1})
    c, r = open_stream(d)
    assert r.status == 200
    assert tokens([next_event(r)]) == ["tok0 "]
    c.close()
    r.close()
    assert wait_until(lambda: a.closed == 1, 10), "the upstream connection stayed open"
    assert d.wait_log("the client left", timeout=10)
    # not streaming: the client leaves while the upstream takes its time
    a.script({"delay": 60})
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    body = json.dumps(dict(CHAT, model="gpt")).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert wait_until(lambda: len(a.requests) == 2, 10)
    s.close()
    assert wait_until(lambda: a.closed == 2, 10), "the upstream connection stayed open"
    # rhemad goes on serving, and stops promptly (nothing left in flight)
    a.script({})
    r = d.request("POST", "/v1/chat/completions", dict(CHAT, model="gpt"))
    assert r.status == 200
    assert d.stop(timeout=20) == 0


def test_slow_reader_pauses_the_upstream(daemons, fake_openai):
    a = fake_openai("a")
    d = start(daemons, [{"name": "a", "base_url": a.url}], [{"name": "gpt", "upstream": "a"}],
              "stall_timeout_seconds = 60;")
    n, pad = 2000, 10000  # ~20 MB in all
    a.script({"chunks": n, "pad": pad})
    c, r = open_stream(d)
    try:
        assert r.status == 200
        # the client reads nothing: the upstream is paused once the socket
        # buffers and rhemad's bound (256 KiB) are full, far from 20 MB
        prev = -1
        for _ in range(100):
            cur = a.sent
            if cur == prev:
                break
            prev = cur
            wait_until(lambda: False, 0.3)
        assert a.sent < n // 2, a.sent
        events = all_events(r)
    finally:
        c.close()
    assert len(events) == n + 1 and data_of(events[-1]) == "[DONE]"
    assert a.sent == n
