"""
Health checks are not a scanner (issue 17, item 14): a check may only
target what distributed.health_checking.allowed_targets admits (empty: the
service's own address), a target outside it is refused at registration
with 400, a name that resolves outside it is critical and never probed,
and the caps on checks per service and in total hold.  SQLite backend;
every server is on 127.0.0.1.
"""

import socket

import pytest

from conftest import require_plugin, sqlite_config, wait_until

KEY = "distributed.health_checking"
FAST = [f"{KEY}.interval_seconds=1", f"{KEY}.timeout_seconds=1"]


class Listener:
    """A TCP port on loopback that counts the connections made to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def connections(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except BlockingIOError:
                return self.accepted
            c.close()
            self.accepted += 1

    def close(self):
        self.sock.close()


@pytest.fixture
def listeners():
    made = []

    def make():
        lst = Listener()
        made.append(lst)
        return lst

    yield make
    for lst in made:
        lst.close()


def start(daemons, tmp_path, *overrides):
    require_plugin("sqlite")
    return daemons(config=sqlite_config(tmp_path / "svc.db"),
                   overrides=FAST + list(overrides)).start()


def put(d, sid, body):
    return d.json("PUT", f"/v1/services/{sid}", body)


def health(d, sid):
    st, _, b = d.json("GET", f"/v1/services/{sid}")
    assert st == 200, b
    return b


def test_default_only_the_service_own_address(daemons, tmp_path, listeners):
    d = start(daemons, tmp_path)
    own, other = listeners(), listeners()
    # the reproduction of the issue: a check to another port of 127.0.0.1
    for check in ({"type": "tcp", "target": f"127.0.0.1:{other.port}"},
                  {"type": "http", "target": f"http://127.0.0.1:{other.port}/"},
                  {"type": "tcp", "target": f"localhost:{own.port}"}):
        st, _, e = put(d, "s-1", {"name": "s", "address": f"127.0.0.1:{own.port}",
                                  "check": check})
        assert st == 400, e
        msg = e["error"]["message"]
        assert "'check.target'" in msg and f"{KEY}.allowed_targets" in msg, msg
        assert "own address" in msg, msg
        assert d.json("GET", "/v1/services/s-1")[0] == 404  # nothing stored
    # the same host as written (a name too), and the same IP in another spelling
    st, _, b = put(d, "s-2", {"name": "s", "address": f"localhost:{own.port}",
                              "check": {"type": "tcp", "target": f"localhost:{own.port}"}})
    assert st == 201, b
    st, _, b = put(d, "s-1", {"name": "s", "address": f"127.0.0.1:{own.port}",
                              "check": {"type": "tcp", "target": f"[::ffff:127.0.0.1]:{own.port}",
                                        "failure_threshold": 1, "success_threshold": 1}})
    assert st == 201, b
    assert wait_until(lambda: health(d, "s-1")["check_status"] == "passing", 6), health(d, "s-1")
    assert wait_until(lambda: health(d, "s-2")["check_status"] == "passing", 6), health(d, "s-2")
    assert own.connections() >= 2 and other.connections() == 0


def test_allowed_targets_admit_and_refuse(daemons, tmp_path, listeners):
    allowed, outside = listeners(), listeners()
    d = start(daemons, tmp_path, f"{KEY}.allowed_targets=127.0.0.0/8:{allowed.port}")
    st, _, e = put(d, "x-1", {"name": "x", "address": "127.0.0.1:9",
                              "check": {"type": "tcp", "target": f"127.0.0.1:{outside.port}"}})
    assert st == 400, e
    assert f"127.0.0.1:{outside.port} is outside {KEY}.allowed_targets" in e["error"]["message"]
    # a name whose port no rule admits: refused before resolving
    st, _, e = put(d, "x-1", {"name": "x", "address": "127.0.0.1:9",
                              "check": {"type": "tcp", "target": f"localhost:{outside.port}"}})
    assert st == 400 and "in no rule" in e["error"]["message"], e
    # inside the list: stored and probed, although not the service's own address
    st, _, b = put(d, "x-1", {"name": "x", "address": "127.0.0.1:9",
                              "check": {"type": "tcp", "target": f"127.0.0.1:{allowed.port}",
                                        "failure_threshold": 1, "success_threshold": 1}})
    assert st == 201, b
    # a name resolved (evdns, /etc/hosts) to an address the list admits
    st, _, b = put(d, "x-2", {"name": "x", "address": "127.0.0.1:9",
                              "check": {"type": "http",
                                        "target": f"http://localhost:{allowed.port}/",
                                        "failure_threshold": 1, "success_threshold": 1}})
    assert st == 201, b
    assert wait_until(lambda: health(d, "x-1")["check_status"] == "passing", 6), health(d, "x-1")
    # the HTTP probe reached the port: the listener answers nothing, so no response
    assert wait_until(lambda: "no response" in (health(d, "x-2")["check_output"] or ""), 8), \
        health(d, "x-2")
    assert allowed.connections() >= 2 and outside.connections() == 0


def test_name_resolving_outside_is_critical_never_probed(daemons, tmp_path, listeners):
    lst = listeners()
    d = start(daemons, tmp_path, f"{KEY}.allowed_targets=10.0.0.0/8:{lst.port}")
    st, _, b = put(d, "n-1", {"name": "n", "address": "127.0.0.1:9",
                              "check": {"type": "tcp", "target": f"localhost:{lst.port}",
                                        "failure_threshold": 1, "success_threshold": 1}})
    assert st == 201, b  # the port is admitted; the address is known only when resolved
    assert wait_until(lambda: health(d, "n-1")["check_status"] == "critical", 6), health(d, "n-1")
    out = health(d, "n-1")["check_output"]
    assert "resolves to no allowed address" in out and "127.0.0.1" in out, out
    assert "not probed" in out, out
    assert lst.connections() == 0


def test_stored_check_outside_a_narrowed_list_is_not_probed(daemons, tmp_path, listeners):
    lst = listeners()
    d = start(daemons, tmp_path, f"{KEY}.allowed_targets=127.0.0.1:{lst.port}")
    st, _, b = put(d, "o-1", {"name": "o", "address": "127.0.0.1:9",
                              "check": {"type": "tcp", "target": f"127.0.0.1:{lst.port}",
                                        "failure_threshold": 1, "success_threshold": 1}})
    assert st == 201, b
    assert wait_until(lambda: health(d, "o-1")["check_status"] == "passing", 6)
    d.stop()
    seen = lst.connections()
    # restarted with the default (empty) list: the stored check is no longer allowed
    d.overrides = FAST
    d.start()
    assert wait_until(lambda: health(d, "o-1")["check_status"] == "critical", 6), health(d, "o-1")
    out = health(d, "o-1")["check_output"]
    assert "own address" in out and "not probed" in out, out
    assert lst.connections() == seen


def test_caps(daemons, tmp_path):
    d = start(daemons, tmp_path, f"{KEY}.max_checks_per_service=2",
              f"{KEY}.max_checks_total=3")
    ttl = {"type": "ttl"}
    for sid in ("a-1", "a-2"):
        st, _, b = put(d, sid, {"name": "a", "address": "127.0.0.1:9", "check": ttl})
        assert st == 201, b
    st, _, e = put(d, "a-3", {"name": "a", "address": "127.0.0.1:9", "check": ttl})
    assert st == 400 and f"{KEY}.max_checks_per_service" in e["error"]["message"], e
    assert d.json("GET", "/v1/services/a-3")[0] == 404
    # without a check, or replacing its own check: no new check
    assert put(d, "a-3", {"name": "a", "address": "127.0.0.1:9"})[0] == 201
    assert put(d, "a-1", {"name": "a", "address": "127.0.0.1:10", "check": ttl})[0] == 200
    assert put(d, "b-1", {"name": "b", "address": "127.0.0.1:9", "check": ttl})[0] == 201
    st, _, e = put(d, "c-1", {"name": "c", "address": "127.0.0.1:9", "check": ttl})
    assert st == 400 and f"{KEY}.max_checks_total" in e["error"]["message"], e
    # a deleted check frees its place
    assert d.request("DELETE", "/v1/services/b-1").status == 204
    assert put(d, "c-1", {"name": "c", "address": "127.0.0.1:9", "check": ttl})[0] == 201


def test_caps_enforced_by_the_checker(daemons, tmp_path):
    d = start(daemons, tmp_path)
    ttl = {"type": "ttl", "interval_seconds": 30, "timeout_seconds": 30,
           "failure_threshold": 1, "success_threshold": 1}
    for sid, name in (("a-1", "a"), ("a-2", "a"), ("b-1", "b"), ("c-1", "c")):
        assert put(d, sid, {"name": name, "address": "127.0.0.1:9", "check": ttl})[0] == 201
    d.stop()
    # restarted with lower caps: the first checks in (name, id) order run, not the others
    d.overrides = FAST + [f"{KEY}.max_checks_per_service=1", f"{KEY}.max_checks_total=2"]
    d.start()
    for sid in ("a-1", "b-1"):
        assert wait_until(lambda: health(d, sid)["check_status"] == "passing", 6), health(d, sid)
    for sid, cap in (("a-2", "max_checks_per_service (1)"), ("c-1", "max_checks_total (2)")):
        assert wait_until(lambda: health(d, sid)["check_status"] == "critical", 6), health(d, sid)
        assert health(d, sid)["check_output"] == f"over {KEY}.{cap}; not probed"


def test_bad_rule_refused_at_startup(daemons, tmp_path):
    from conftest import run_rhemad
    conf = tmp_path / "bad.conf"
    conf.write_text('distributed: { health_checking: {\n'
                    '  allowed_targets = [ "127.0.0.0/8", "10.0.0.1/8" ]; }; };\n')
    r = run_rhemad(["-t", "-c", str(conf)])
    assert r.returncode != 0
    assert f"bad.conf:2: '{KEY}.allowed_targets[1]'" in r.stderr, r.stderr
    assert "bits set beyond the /8 prefix" in r.stderr, r.stderr
