#!/usr/bin/python3
"""
bench/watch_latency.py URL [N]: the change feed's event latency (issue 12).

One server-sent events watcher on URL/v1/events and one writer on its own
keep-alive connection; N times (default 1000), the writer PUTs a session
and waits for its event: the latency is from the PUT's 2xx (the answer
read) to the event with that revision (the ETag) read by the watcher.
Prints p50, p99 and max in milliseconds.  Used by bench/run-watch.sh.
"""
import http.client
import json
import socket
import sys
import time
from urllib.parse import urlsplit


def main():
    url = urlsplit(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    host, port = url.hostname, url.port
    w = socket.create_connection((host, port))
    w.sendall(b"GET /v1/events?types=session. HTTP/1.1\r\nHost: x\r\n"
              b"Accept: text/event-stream\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += w.recv(65536)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    c = http.client.HTTPConnection(host, port)
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
            buf += w.recv(65536)
        lat.append((time.perf_counter() - t0) * 1000)
        buf = buf[buf.index(want) + len(want):]
    lat.sort()
    print(f"p50 {lat[len(lat) // 2]:.3f} ms  p99 {lat[int(len(lat) * 0.99)]:.3f} ms  "
          f"max {lat[-1]:.3f} ms  ({n} writes)")


if __name__ == "__main__":
    main()
