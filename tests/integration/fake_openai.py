"""
A fake OpenAI-compatible upstream for the AI gateway's tests (stdlib only).

It answers POST /v1/chat/completions, /v1/completions, /v1/embeddings and
GET /v1/models as the OpenAI API does, and records every request it gets
(path, headers, JSON body).  What it does next is scripted:

    POST /_control  {"script": [action, ...]}   queue actions, one per request
                    {"default": action}          what to do when the queue is empty
    POST /_reset                                 empty queue, records, default
    GET  /_requests                              {"count": n, "requests": [...],
                                                  "closed": n, "sent": n}

"closed" counts the requests whose connection the client (rhemad) closed
while the fake held it (a delay, a stall), seen as an end of file on the
socket; "sent" the stream chunks written so far.

or per request with the header `X-Fake-Action: <action as JSON>` (used
first).  An action is a JSON object, every member optional:

    status        answer with this status and an OpenAI-shaped error (default 200)
    retry_after   a Retry-After header value (string)
    delay         seconds to wait before answering
    body          the exact JSON body to answer
    chunks        for "stream": true, how many content chunks (default 3)
    cut_after     stream: close the connection after this many chunks
    stall_after   stream: stop sending (hold the connection) after this many chunks,
                  until rhemad closes it (recorded in "closed") or the fake stops
    hold_after    stream: after this many chunks wait for FakeOpenAI.release(), then go on
    pad           stream: this many bytes of padding in each chunk's content
    malformed_at  stream: chunk number k is not JSON
    close         close the connection without any answer

Run it alone with `python3 fake_openai.py PORT [NAME]`; in tests, FakeOpenAI(name)
starts it on a free 127.0.0.1 port in a thread (.url, .stop()).
"""

import base64
import json
import select
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.script = []
        self.default = {}
        self.requests = []
        self.stalls = threading.Event()  # set at stop: stalled handlers end
        self.release = threading.Event()  # hold_after: go on
        self.closed = 0
        self.sent = 0

    def next_action(self):
        with self.lock:
            return self.script.pop(0) if self.script else dict(self.default)


def _reply_body(state, path, req):
    model = req.get("model", "")
    now = int(time.time())
    if path.endswith("/chat/completions"):
        text = ""
        for m in req.get("messages") or []:
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                text = m["content"]
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": now,
                "model": model, "upstream": state.name,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "echo: " + text}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    if path.endswith("/completions"):
        return {"id": "cmpl-fake", "object": "text_completion", "created": now, "model": model,
                "upstream": state.name,
                "choices": [{"index": 0, "text": "echo: " + str(req.get("prompt", "")),
                             "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    inp = req.get("input", "")
    n = len(inp) if isinstance(inp, list) else 1
    def vec(i):
        v = [0.25, -0.5, float(i)]
        if req.get("encoding_format") == "base64":  # as OpenAI: little-endian float32
            return base64.b64encode(struct.pack("<%df" % len(v), *v)).decode()
        return v
    return {"object": "list", "model": model, "upstream": state.name,
            "data": [{"object": "embedding", "index": i, "embedding": vec(i)}
                     for i in range(n)],
            "usage": {"prompt_tokens": n, "total_tokens": n}}


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # a stream's chunks go out at once, not after a delayed ACK

        def log_message(self, *args):
            pass

        def _send(self, status, obj, headers=()):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _record(self, body):
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            with state.lock:
                state.requests.append({"method": self.command, "path": self.path,
                                       "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "body": parsed, "raw": body.decode(errors="replace")})
            return parsed

        def _wait_closed(self, seconds, stop=None):
            """Hold for `seconds` (or until `stop` is set); True, recorded, if the client closed."""
            end = time.monotonic() + seconds
            sock = self.connection
            while time.monotonic() < end and not (stop and stop.is_set()):
                r, _, _ = select.select([sock], [], [], 0.05)
                if r:
                    try:
                        data = sock.recv(1, socket.MSG_PEEK)
                    except OSError:
                        data = b""
                    if not data:
                        with state.lock:
                            state.closed += 1
                        self.close_connection = True
                        return True
                    time.sleep(0.05)  # bytes of a next request: not a close
            return False

        def do_GET(self):
            if self.path == "/_requests":
                with state.lock:
                    self._send(200, {"count": len(state.requests), "requests": state.requests,
                                     "closed": state.closed, "sent": state.sent})
                return
            if self.path.endswith("/models"):
                self._record(b"")
                self._send(200, {"object": "list", "data": [
                    {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]})
                return
            self._send(404, {"error": {"message": "no route", "type": "invalid_request_error",
                                       "param": None, "code": None}})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            if self.path == "/_control":
                ctl = json.loads(body or b"{}")
                with state.lock:
                    if "script" in ctl:
                        state.script.extend(ctl["script"])
                    if "default" in ctl:
                        state.default = ctl["default"]
                self._send(200, {"ok": True})
                return
            if self.path == "/_reset":
                with state.lock:
                    state.script, state.default, state.requests = [], {}, []
                    state.closed = state.sent = 0
                    state.release.clear()
                self._send(200, {"ok": True})
                return
            req = self._record(body)
            hdr = self.headers.get("X-Fake-Action")
            action = json.loads(hdr) if hdr else state.next_action()
            if action.get("delay"):
                if self._wait_closed(float(action["delay"])):
                    return
            if action.get("close"):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            status = int(action.get("status", 200))
            headers = []
            if "retry_after" in action:
                headers.append(("Retry-After", str(action["retry_after"])))
            if status != 200:
                self._send(status, action.get("body") or {"error": {
                    "message": f"fake upstream {state.name} says {status}",
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "param": None, "code": None}}, headers)
                return
            if not isinstance(req, dict):
                self._send(400, {"error": {"message": "not JSON", "type": "invalid_request_error",
                                           "param": None, "code": None}})
                return
            if req.get("stream"):
                self._stream(req, action)
                return
            self._send(200, action.get("body") or _reply_body(state, self.path, req), headers)

        def _stream(self, req, action):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def chunk(data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            for i in range(int(action.get("chunks", 3))):
                if action.get("cut_after") == i:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action.get("stall_after") == i:
                    self._wait_closed(60, state.stalls)
                    self.close_connection = True
                    return
                if action.get("hold_after") == i:
                    state.release.wait(30)
                if action.get("malformed_at") == i:
                    chunk(b"data: {not json\n\n")
                    continue
                ev = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                      "model": req.get("model"), "upstream": state.name,
                      "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                   "finish_reason": None}]}
                if action.get("pad"):
                    ev["choices"][0]["delta"]["content"] += "x" * int(action["pad"])
                with state.lock:
                    state.sent += 1  # counted before the write: a reader never sees more
                try:
                    chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
                except OSError:  # rhemad closed the connection: not counted in
                    # "closed", which counts closes seen while the fake held the
                    # connection -- a write may or may not fail after rhemad left
                    self.close_connection = True
                    return
            chunk(b"data: [DONE]\n\n")
            chunk(b"")

    return Handler


class FakeOpenAI:
    """The fake on a free 127.0.0.1 port, served by a thread."""

    def __init__(self, name="fake", port=0):
        self.state = State(name)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self.state))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, *actions):
        with self.state.lock:
            self.state.script.extend(actions)

    def default(self, action):
        with self.state.lock:
            self.state.default = action

    @property
    def requests(self):
        with self.state.lock:
            return list(self.state.requests)

    def release(self):
        self.state.release.set()

    @property
    def closed(self):
        with self.state.lock:
            return self.state.closed

    @property
    def sent(self):
        with self.state.lock:
            return self.state.sent

    def stop(self):
        self.state.stalls.set()
        self.state.release.set()
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    f = FakeOpenAI(sys.argv[2] if len(sys.argv) > 2 else "fake", int(sys.argv[1]))
    print(f"fake OpenAI upstream on {f.url}", flush=True)
    try:
        f.thread.join()
    except KeyboardInterrupt:
        f.stop()
