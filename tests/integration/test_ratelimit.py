"""
Rate limiting (issue 9 item 7; doc/security.md "Rate limiting").

The limits under test use a day window (one request per 8640 s at
q=10): nothing refills while a test runs, however slow the machine, so
"exactly burst + 1 pass, the next is 429" holds exactly.
"""

import re
import signal

import pytest

from conftest import PLUGIN_DIR, memory_config, require_plugin, run_rhemad, sqlite_config, wait_until
from test_auth import auth_config, bearer, new_key

DAY = 86400


def limits(per_day=10, burst=4, per_minute=0, extra=""):
    return ("ai_service: { rate_limiting: { enabled = true; "
            f"requests_per_minute = {per_minute}; requests_per_day = {per_day}; "
            f"burst = {burst}; {extra} }}; }};\n")


def parse_ratelimit(value):
    """'"day";r=3;t=17280, ...' -> {"day": (3, 17280)}"""
    out = {}
    for item in value.split(","):
        m = re.fullmatch(r'\s*"(\w+)";r=(\d+);t=(\d+)\s*', item)
        assert m, value
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def exhaust(d, path="/v1/sessions", headers=None, upto=50):
    """Send GETs until the first 429; the list of responses."""
    got = []
    for _ in range(upto):
        r = d.request("GET", path, headers=headers)
        got.append(r)
        if r.status == 429:
            break
    return got


def test_exactly_burst_plus_one_then_429_with_consistent_headers(daemons, tmp_path):
    require_plugin("sqlite")
    db = tmp_path / "r.db"
    d = daemons(config=sqlite_config(db) + limits(per_day=10, burst=4)).start()
    got = exhaust(d)
    statuses = [r.status for r in got]
    assert statuses == [200] * 5 + [429], statuses
    interval = DAY // 10
    for i, r in enumerate(got):
        assert r.headers["RateLimit-Policy"] == f'"day";q=10;w={DAY}', r.headers
        rl = parse_ratelimit(r.headers["RateLimit"])
        left, reset = rl["day"]
        if i < 5:
            # after the (i+1)-th request: 5 - (i+1) more pass now, full again in (i+1) intervals
            assert left == 4 - i, (i, r.headers["RateLimit"])
            assert (i + 1) * interval - 2 <= reset <= (i + 1) * interval, (i, reset)
        else:
            assert left == 0, r.headers["RateLimit"]
            retry = int(r.headers["Retry-After"])
            assert interval - 2 <= retry <= interval, retry
            body = r.json()
            assert body["error"]["code"] == "rate_limited", body
            assert "client 127.0.0.1" in body["error"]["message"], body
            assert "retry after" in body["error"]["message"], body
    # a refusal counted nothing: the next one is refused the same way
    again = d.request("GET", "/v1/sessions")
    assert again.status == 429
    assert parse_ratelimit(again.headers["RateLimit"])["day"][0] == 0
    # writes are limited the same way, and change nothing
    r = d.request("PUT", "/v1/sessions/s1", {"topic": "t"})
    assert r.status == 429
    # health probes are never limited
    for path in ("/health/live", "/health/ready", "/health"):
        r = d.request("GET", path)
        assert r.status == 200, (path, r.status)
        assert "RateLimit" not in r.headers
    d.stop()
    d.write_config(sqlite_config(db))
    d.start()
    assert d.request("GET", "/v1/sessions/s1").status == 404


def test_windows_all_or_nothing_and_minute_burst(daemons):
    # minute: 2 per minute with burst 1 -> 2 at once; day: 100 -> never the binding one here
    d = daemons(config=memory_config() + limits(per_day=100, burst=1, per_minute=2,
                                                extra="requests_per_hour = 1000;")).start()
    got = exhaust(d)
    assert [r.status for r in got] == [200, 200, 429]
    policy = got[0].headers["RateLimit-Policy"]
    assert policy == f'"minute";q=2;w=60, "hour";q=1000;w=3600, "day";q=100;w={DAY}', policy
    first = parse_ratelimit(got[0].headers["RateLimit"])
    assert set(first) == {"minute", "hour", "day"}
    assert first["minute"][0] == 1 and first["hour"][0] == 999 and first["day"][0] == 99
    # the refusal by the minute window did not consume the hour's or the day's
    last = parse_ratelimit(got[2].headers["RateLimit"])
    assert last["minute"][0] == 0
    assert last["hour"][0] == 998 and last["day"][0] == 98, last
    assert 1 <= int(got[2].headers["Retry-After"]) <= 30


def test_limits_are_per_key_and_per_role(daemons):
    admin = new_key("admin", "admin")
    agent1 = new_key("agent-1", "agent")
    agent2 = new_key("agent-2", "agent")
    bulk = new_key("bulk", "bulk")
    both = new_key("both", "small,big")
    roles = {"admin": ["*"], "agent": ["sessions:read"],
             "bulk": ["sessions:read", "operations:read"],
             "small": ["sessions:read"], "big": ["sessions:read"]}
    extra_limits = ('roles = ( { role = "bulk"; requests_per_day = 0; requests_per_minute = 0; },'
                    ' { role = "admin"; burst = 9; },'
                    ' { role = "small"; burst = 1; requests_per_day = 20; },'
                    ' { role = "big"; burst = 4; } );')
    d = daemons(config=auth_config(memory_config(),
                                   [admin[1], agent1[1], agent2[1], bulk[1], both[1]],
                                   roles) + limits(per_day=10, burst=2, extra=extra_limits))
    d.start()
    # each key has its own allowance
    assert [r.status for r in exhaust(d, headers=bearer(agent1[0]))] == [200] * 3 + [429]
    assert [r.status for r in exhaust(d, headers=bearer(agent2[0]))] == [200] * 3 + [429]
    # a role override: a larger burst
    assert [r.status for r in exhaust(d, headers=bearer(admin[0]))] == [200] * 10 + [429]
    # several overridden roles: the most generous of each (burst 4 of big, q=20 of small)
    got = exhaust(d, headers=bearer(both[0]))
    assert [r.status for r in got] == [200] * 5 + [429]
    assert got[0].headers["RateLimit-Policy"] == f'"day";q=20;w={DAY}'
    # a role with every window off is not limited, and gets no RateLimit headers
    for _ in range(20):
        r = d.request("GET", "/v1/sessions", headers=bearer(bulk[0]))
        assert r.status == 200 and "RateLimit" not in r.headers
    # a request refused before it is limited (no key: 401) counts nothing against anyone
    assert d.request("GET", "/v1/sessions").status == 401
    # a runtime key is a party of its own as soon as it exists
    s, _, _ = d.json("POST", "/v1/auth/keys", {"name": "new", "roles": ["agent"]},
                           bearer(admin[0]))
    assert s == 429  # the admin key is exhausted: creating keys is limited too
    s, _, stats = d.json("GET", "/v1/stats", headers=bearer(bulk[0]))
    assert s == 200
    assert stats["rate_limiting"] == {"enabled": True, "allowed": 3 + 3 + 10 + 5, "refused": 5,
                                      "backend_errors": 0}, stats["rate_limiting"]


def test_without_keys_the_client_address_is_limited(daemons):
    d = daemons(config=memory_config() + limits(per_day=10, burst=0)).start()
    assert [r.status for r in exhaust(d)] == [200, 429]
    # another route, same client: the same allowance
    assert d.request("GET", "/v1/agents").status == 429


def test_two_nodes_on_one_sqlite_file_share_one_limit(daemons, tmp_path):
    require_plugin("sqlite")
    db = tmp_path / "shared.db"
    cfg = sqlite_config(db) + limits(per_day=10, burst=5)
    a = daemons("a", config=cfg).start()
    b = daemons("b", config=cfg).start()
    statuses = []
    for i in range(12):
        statuses.append((a if i % 2 == 0 else b).request("GET", "/v1/sessions").status)
    # one limit for both nodes: 6 in all, wherever they were sent
    assert statuses.count(200) == 6 and statuses[6:] == [429] * 6, statuses


def test_two_nodes_on_one_redis_share_one_limit(daemons, redis):
    _, port = redis
    cfg = ('persistence: { backend = "redis"; redis = { host = "127.0.0.1"; '
           f'port = {port}; password = "s3cret pass"; timeout_ms = 2000; }}; }};\n'
           + limits(per_day=10, burst=5))
    a = daemons("a", config=cfg).start()
    b = daemons("b", config=cfg).start()
    statuses = [(a if i % 2 else b).request("GET", "/v1/sessions").status for i in range(12)]
    assert statuses.count(200) == 6 and statuses[6:] == [429] * 6, statuses


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_failure_mode_when_the_backend_cannot_answer(daemons, redis, mode):
    proc, port = redis
    cfg = ('persistence: { backend = "redis"; redis = { host = "127.0.0.1"; '
           f'port = {port}; password = "s3cret pass"; timeout_ms = 500; }}; }};\n'
           + limits(per_day=10, burst=5, extra=f'failure_mode = "{mode}";'))
    d = daemons(config=cfg).start()
    assert d.request("GET", "/v1/sessions").status == 200
    proc.kill()
    proc.wait(10)
    # a route that does not read the backend: only the limit depends on it
    r = d.request("GET", "/v1/auth/whoami")
    if mode == "open":
        assert r.status == 200, (r.status, r.body)
        assert "RateLimit" not in r.headers
    else:
        assert r.status == 503, (r.status, r.body)
        assert r.json()["error"]["code"] == "rate_limit_unavailable"
        assert r.headers["Retry-After"] == "1"
    assert wait_until(lambda: "could not be counted" in d.log(), 5), d.log()


def test_bad_settings_are_refused_at_check(tmp_path):
    conf = tmp_path / "r.conf"
    conf.write_text(memory_config() + limits(per_day=0, per_minute=0))
    r = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0 and "every window is 0" in r.stderr, r.stderr
    conf.write_text(memory_config() + limits(extra='roles = ( { role = "nobody"; burst = 1; } );'))
    r = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0 and "'nobody' is not a role of security.roles" in r.stderr, r.stderr
    conf.write_text(memory_config() + limits(extra='failure_mode = "maybe";'))
    r = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0 and "failure_mode" in r.stderr, r.stderr
    conf.write_text(memory_config() + limits(burst=-1))
    r = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0 and "burst" in r.stderr, r.stderr
    # a burst of a million at one request a day is beyond what rate() takes (2^50 us)
    conf.write_text(memory_config() + limits(per_day=1, burst=1000000))
    r = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0 and "more than 35 years" in r.stderr, r.stderr
    conf.write_text(memory_config() + 'security: { roles = ( { name = "slow"; permissions = '
                    '[ "sessions:read" ]; } ); };\n'
                    + limits(per_minute=60, extra='roles = ( { role = "slow"; requests_per_minute = 0; '
                             'requests_per_day = 2; burst = 100000; } );'))
    r = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert r.returncode != 0 and "ai_service.rate_limiting.roles[0]: burst 100000" in r.stderr, r.stderr


def test_reload_says_a_limit_change_needs_a_restart(daemons):
    d = daemons(config=memory_config() + limits(per_day=10, burst=4)).start()
    since = d.log_size()
    d.write_config(memory_config() + limits(per_day=20, burst=4))
    d.send(signal.SIGHUP)
    assert d.wait_log("rate limits) changed; restart to apply", since), d.log()
    # the running limits stay: 5 pass, not 6
    assert [r.status for r in exhaust(d)] == [200] * 5 + [429]
