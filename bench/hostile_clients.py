#!/usr/bin/python3
"""
hostile_clients.py -- the numbers of issue 17 ("Hostile clients"), measured
against the build tree's rhemad with the test harness (tests/integration/
conftest.py: free 127.0.0.1 ports, the daemon's log in the scratch directory).
A measurement, not a test: it asserts nothing about speed and prints one line
per number.  Run from the source tree, with the environment the integration
tests use:

  export top_srcdir=$PWD top_builddir=$PWD/_build RHEMA_PLUGIN_DIR=$PWD/_build/plugins/.libs
  /usr/bin/python3 bench/hostile_clients.py WHAT SCRATCH_DIR [N]

WHAT is one of
  drain       item 7: SIGTERM after a client reset mid-reply (shutdown_timeout_seconds=30)
  emfile      item 4: CPU and log lines at RLIMIT_NOFILE=64 with 150 connections, 6 s
  unread      item 6: RSS with 30 unread 64 MiB decompressions
  slowbody    item 5: RSS with 40 bodies of 10 MiB - 16 bytes, then silence (body deadline 5 s);
              with N: a second round, to tell a leak from memory the allocator keeps
  intersect   item 11: N sqlite sessions (100000 in the note), status+participant lists
  interleave  item 11, worst case: N sqlite sessions in two interleaved halves, an empty
              intersection of two 50% sets, and six of them at once beside /health/live
"""
import json, os, resource, signal, socket, struct, subprocess, sys, threading, time, http.client
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from pathlib import Path
from conftest import Daemon, free_port, wait_until, sqlite_config

TMP = Path(sys.argv[2]); TMP.mkdir(parents=True, exist_ok=True)
what = sys.argv[1]

def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def conn(d, rcvbuf=None, timeout=10):
    s = socket.socket()
    if rcvbuf: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout); s.connect(("127.0.0.1", d.port)); return s

def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split(); return int(f[11]) + int(f[12])

if what == "drain":   # item 7
    d = Daemon(TMP, overrides=["service.shutdown_timeout_seconds=30"]); d.start()
    assert d.json("PUT", "/v1/sessions/big", {"topic": "big", "decisions": [{"blob": "x" * (6 << 20)}]})[0] == 201
    s = conn(d, rcvbuf=4096); s.sendall(b"GET /v1/sessions/big HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
    time.sleep(0.5)
    t0 = time.monotonic(); d.send(signal.SIGTERM); rc = d.wait(40)
    print(f"item7: SIGTERM after a reset mid-reply: exit {rc} in {time.monotonic()-t0:.2f} s (shutdown_timeout_seconds=30)")

elif what == "emfile":  # item 4
    d = Daemon(TMP, workers=2); d.port = free_port()
    with open(d.logfile, "ab") as log:
        d.proc = subprocess.Popen(d.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)))
    d.wait_ready()
    flood = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(150)]
    d.wait_log("Too many open files", timeout=10)
    size0 = d.log_size(); t0 = ticks(d.pid); time.sleep(6); used = ticks(d.pid) - t0
    hz = os.sysconf("SC_CLK_TCK")
    # is /health/live answered meanwhile? (it waits in the backlog behind 150)
    print(f"item4: at RLIMIT_NOFILE=64 with 150 connections: CPU {100*used/hz/6:.1f}% over 6 s, "
          f"log grew {d.log_size()-size0} bytes; lines 'accept: Too many open files': {d.log().count('accept: Too many open files')}")
    for s in flood: s.close()
    t0 = time.monotonic()
    ok = wait_until(lambda: d.request("GET", "/health/live", timeout=2).status == 200, 20, 0.2)
    print(f"item4: /health/live 200 after closing them: {ok} within {time.monotonic()-t0:.2f} s")
    d.stop()

elif what == "unread":  # item 6
    d = Daemon(TMP, overrides=["service.max_request_size_bytes=80000000"]); d.start()
    zeros = b"\0" * (64 << 20)
    hc = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    hc.request("POST", "/v1/messages/compress?algorithm=zstd", body=zeros); r = hc.getresponse(); frame = r.read()
    assert r.status == 200, (r.status, frame[:200]); hc.close()
    base = rss_kb(d.pid); idle = []
    for _ in range(30):
        s = conn(d, rcvbuf=4096)
        s.sendall(b"POST /v1/messages/decompress HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(frame) + frame)
        idle.append(s)
    wait_until(lambda: d.log().count('"POST /v1/messages/decompress"') >= 30, 60)
    time.sleep(1)
    peak = rss_kb(d.pid)
    codes = {}
    for line in d.log().splitlines():
        if '"POST /v1/messages/decompress"' in line:
            for c in (" 200 ", " 503 ", " 413 "):
                if c in line: codes[c.strip()] = codes.get(c.strip(), 0) + 1
    live = d.request("GET", "/health/live", timeout=5).status
    print(f"item6: 30 unread 64 MiB decompressions: RSS {base/1024:.0f} MB -> {peak/1024:.0f} MB; statuses in access log {codes} (frame {len(frame)} bytes); /health/live {live}")
    for s in idle: s.close()
    d.stop()

elif what == "slowbody":  # item 5
    d = Daemon(TMP, overrides=["service.request_body_timeout_seconds=5"]); d.start()
    base = rss_kb(d.pid); socks = []
    chunk = b"y" * (1 << 20)
    for i in range(40):
        s = conn(d, timeout=30)
        s.sendall(b"POST /v1/messages/compress HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10 << 20))
        socks.append(s)
    def feed(s):
        try:
            for _ in range(9): s.sendall(chunk)
            s.sendall(b"y" * ((1 << 20) - 16))
        except OSError: pass
    ts = [threading.Thread(target=feed, args=(s,)) for s in socks]
    [t.start() for t in ts]; [t.join() for t in ts]
    time.sleep(0.5); held = rss_kb(d.pid)
    t0 = time.monotonic()
    cut = wait_until(lambda: d.log().count("cut a connection whose request body") >= 40, 30, 0.2)
    time.sleep(1)
    print(f"item5: 40 bodies of 10 MiB - 16 bytes, then silence: RSS {base/1024:.0f} -> {held/1024:.0f} MB while held; "
          f"all cut (408) {cut} within {time.monotonic()-t0:.1f} s of the last byte at request_body_timeout_seconds=5; RSS after {rss_kb(d.pid)/1024:.0f} MB")
    for s in socks: s.close()
    if len(sys.argv) > 3:  # a second round: does RSS keep growing (a leak) or is it reused?
        socks = []
        for i in range(40):
            s = conn(d, timeout=30)
            s.sendall(b"POST /v1/messages/compress HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10 << 20))
            socks.append(s)
        ts = [threading.Thread(target=feed, args=(s,)) for s in socks]
        [t.start() for t in ts]; [t.join() for t in ts]
        wait_until(lambda: d.log().count("cut a connection whose request body") >= 80, 30, 0.2)
        time.sleep(1)
        print(f"item5: after a second round of 40: RSS {rss_kb(d.pid)/1024:.0f} MB")
        for s in socks: s.close()
    d.stop()

elif what == "intersect":  # item 11
    n = int(sys.argv[3])
    d = Daemon(TMP, config=sqlite_config(TMP / "r.db"), workers=2); d.start()
    def fill(k, lo, hi):
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        for i in range(lo, hi):
            parts = ["needle"] if i % (n // 3) == 7 else [f"p{i % 997}"]
            body = json.dumps({"topic": "t", "participants": parts, "status": "Active"})
            c.request("PUT", f"/v1/sessions/s{i:07d}", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse(); r.read(); assert r.status == 201, r.status
    t0 = time.monotonic(); step = n // 8
    ts = [threading.Thread(target=fill, args=(k, k*step, n if k == 7 else (k+1)*step)) for k in range(8)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print(f"item11: {n} sqlite sessions written in {time.monotonic()-t0:.0f} s")
    for q in ("status=Active&participant=needle", "participant=needle&status=Active&limit=1000",
              "status=Paused&participant=p5", "participant=needle"):
        best = 1e9
        for _ in range(3):
            t0 = time.monotonic(); r = d.request("GET", f"/v1/sessions?{q}", timeout=60); best = min(best, time.monotonic() - t0)
        print(f"item11: GET /v1/sessions?{q}: {r.status}, {len(r.json()['items'])} items, best of 3 {best*1000:.1f} ms")
    # six such calls at once, and /health/live meanwhile
    lat = []
    def q6():
        d.request("GET", "/v1/sessions?status=Active&participant=needle", timeout=60)
    ts = [threading.Thread(target=q6) for _ in range(6)]
    [t.start() for t in ts]
    t0 = time.monotonic(); d.request("GET", "/health/live"); lat.append(time.monotonic() - t0)
    [t.join() for t in ts]
    print(f"item11: /health/live during six concurrent status+participant calls: {lat[0]*1000:.1f} ms")
    d.stop()

if what == "interleave":  # item 11, worst case: two large interleaved sets, empty intersection
    n = int(sys.argv[3])
    d = Daemon(TMP, config=sqlite_config(TMP / "r.db"), workers=2); d.start()
    def fill(k, lo, hi):
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
        for i in range(lo, hi):
            body = json.dumps({"topic": "t", "participants": ["x" if i % 2 else "y"],
                               "status": "Paused" if i % 2 == 0 else "Active"})
            c.request("PUT", f"/v1/sessions/s{i:07d}", body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse(); r.read(); assert r.status == 201, r.status
    step = n // 8
    ts = [threading.Thread(target=fill, args=(k, k*step, n if k == 7 else (k+1)*step)) for k in range(8)]
    [t.start() for t in ts]; [t.join() for t in ts]
    for q in ("status=Paused&participant=x", "status=Active&participant=x&limit=1000", "status=Active&limit=1000"):
        best = 1e9
        for _ in range(3):
            t0 = time.monotonic(); r = d.request("GET", f"/v1/sessions?{q}", timeout=120); best = min(best, time.monotonic() - t0)
        print(f"item11 worst case ({n} sessions, two interleaved halves): GET /v1/sessions?{q}: {r.status}, {len(r.json()['items'])} items, best of 3 {best*1000:.1f} ms")
    res = {}
    def q6(i):
        t0 = time.monotonic(); d.request("GET", "/v1/sessions?status=Paused&participant=x", timeout=120); res[i] = time.monotonic() - t0
    ts = [threading.Thread(target=q6, args=(i,)) for i in range(6)]
    [t.start() for t in ts]
    time.sleep(0.05)
    t0 = time.monotonic(); d.request("GET", "/health/live", timeout=60); live = time.monotonic() - t0
    [t.join() for t in ts]
    print(f"item11 worst case: six concurrent empty intersections took up to {max(res.values())*1000:.0f} ms; /health/live meanwhile {live*1000:.1f} ms")
    d.stop()
