#!/usr/bin/python3
"""
bench/watch_latency.py WRITE_URL [WATCH_URL] [N]: the change feed's event
latency (issue 12).
bench/watch_latency.py --etcd ETCD_URL [N]: the same for etcd's watch.

rhema: one server-sent events watcher on WATCH_URL/v1/events (default:
WRITE_URL, the same node) and one writer on WRITE_URL on its own keep-alive
connection; N times (default 1000), the writer PUTs a session and waits for
its event: the latency is from the PUT's 2xx (the answer read) to the event
with that revision (the ETag) read by the watcher.  With WATCH_URL another
node on the same backend, that is the cross-node latency.

etcd (the anchor): one watch stream (POST /v3/watch of the v3 JSON gateway)
and one writer (POST /v3/kv/put) on ETCD_URL; the latency is from the put's
answer to the watch message carrying the put's revision.

Prints p50, p99 and max in milliseconds.  Used by bench/run-watch.sh.
"""
import base64
import http.client
import json
import socket
import sys
import time
from urllib.parse import urlsplit


def report(lat, n):
    lat.sort()
    print(f"p50 {lat[len(lat) // 2]:.3f} ms  p99 {lat[int(len(lat) * 0.99)]:.3f} ms  "
          f"max {lat[-1]:.3f} ms  ({n} writes)")


def rhema(write_url, watch_url, n):
    w = socket.create_connection((watch_url.hostname, watch_url.port))
    w.sendall(b"GET /v1/events?types=session. HTTP/1.1\r\nHost: x\r\n"
              b"Accept: text/event-stream\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = w.recv(65536)
        if not chunk:
            sys.exit("the watch stream closed")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        sys.exit(f"GET /v1/events answered {head.splitlines()[0].decode()}")
    c = http.client.HTTPConnection(write_url.hostname, write_url.port)
    lat = []
    body = json.dumps({"topic": "latency"})
    for i in range(n):
        c.request("PUT", f"/v1/sessions/lat-{i % 50}", body,
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        t0 = time.perf_counter()
        if r.status not in (200, 201):
            sys.exit(f"PUT answered {r.status}")
        want = b"id: " + r.getheader("ETag").strip('"').encode() + b"\n"
        while want not in buf:
            chunk = w.recv(65536)
            if not chunk:
                sys.exit("the watch stream closed")
            buf += chunk
        lat.append((time.perf_counter() - t0) * 1000)
        buf = buf[buf.index(want) + len(want):]
    report(lat, n)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd(url, n):
    key = "rhema-bench/latency"
    w = http.client.HTTPConnection(url.hostname, url.port)
    w.request("POST", "/v3/watch", json.dumps({"create_request": {"key": b64(key)}}),
              {"Content-Type": "application/json"})
    ws = w.getresponse()
    if ws.status != 200:
        sys.exit(f"etcd POST /v3/watch answered {ws.status}")
    created = json.loads(ws.readline())  # {"result": {"created": true, ...}}
    if not created.get("result", {}).get("created"):
        sys.exit(f"etcd watch not created: {created}")
    c = http.client.HTTPConnection(url.hostname, url.port)
    lat = []
    for i in range(n):
        c.request("POST", "/v3/kv/put",
                  json.dumps({"key": b64(key), "value": b64(f"v{i}")}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        answer = r.read()
        t0 = time.perf_counter()
        if r.status != 200:
            sys.exit(f"etcd put answered {r.status}: {answer!r}")
        rev = json.loads(answer)["header"]["revision"]
        while True:
            line = ws.readline()
            if not line:
                sys.exit("the etcd watch stream closed")
            evs = json.loads(line).get("result", {}).get("events", [])
            if any(e["kv"]["mod_revision"] == rev for e in evs):
                break
        lat.append((time.perf_counter() - t0) * 1000)
    report(lat, n)


def main():
    args = sys.argv[1:]
    if args and args[0] == "--etcd":
        if len(args) not in (2, 3):
            sys.exit("usage: watch_latency.py --etcd ETCD_URL [N]")
        etcd(urlsplit(args[1]), int(args[2]) if len(args) > 2 else 1000)
        return
    if not 1 <= len(args) <= 3:
        sys.exit("usage: watch_latency.py WRITE_URL [WATCH_URL] [N]")
    write = urlsplit(args[0])
    watch = write
    n = 1000
    rest = args[1:]
    if rest and not rest[0].isdigit():
        watch = urlsplit(rest.pop(0))
    if rest:
        n = int(rest[0])
    rhema(write, watch, n)


if __name__ == "__main__":
    main()
