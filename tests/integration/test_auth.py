"""
API keys, roles and rules, protected mode (issue 9, items 1-3; doc/security.md).

The role matrix walks every route of the daemon's route tables, read from
the tables in core/api/*.c themselves, so that a new route cannot escape
it: for each one, no key, a key with a bad checksum, an unknown key, a
revoked key and an expired key are 401; a key holding every permission but
the route's is 403; a key holding only the route's permission gets past
authorization.
"""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (TOP_BUILDDIR, TOP_SRCDIR, PLUGIN_DIR, memory_config, require_plugin,
                      run_rhemad, sqlite_config, wait_until)

RHEMACTL = TOP_BUILDDIR / "rhemactl"
API_DIR = TOP_SRCDIR / "core" / "api"
ROUTE_RE = re.compile(r'\{\s*RHEMA_M_(GET|PUT|POST|DELETE|PATCH)\s*,\s*"([^"]+)"\s*,\s*\w+\s*,'
                      r'\s*"([^"]+)"\s*,\s*RHEMA_(READS|WRITES|WRITES_STORAGE)\s*\}')
ALWAYS_OPEN = {"/health/live", "/health/ready"}
# the console's files (api_console.h): answered without a key, not always 200
CONSOLE_FILES = {"/ui", "/ui/", "/ui/{file}"}


def route_tables():
    """(method, template, permission) of every route line of core/api/*.c."""
    routes, tokens = [], 0
    for src in sorted(API_DIR.glob("*.c")):
        text = src.read_text()
        for table in re.finditer(r"const struct rhema_route \w+\[\] = \{(.*?)\n\};", text, re.S):
            body = table.group(1)
            tokens += len(re.findall(r"\bRHEMA_M_[A-Z]+\b", body))
            routes += [(m, p, perm) for m, p, perm, _ in ROUTE_RE.findall(body)]
    # a route line the pattern does not read would escape the matrix
    assert len(routes) == tokens, f"{tokens} routes in the tables, {len(routes)} read"
    assert len(routes) >= 40
    return routes


def concrete(template):
    """A path for a template: {key_id} gets a public id's shape, other ids 'm1'."""
    if "{key_id}" in template:
        return template.replace("{key_id}", "AAAAAAAAAAAA")
    return re.sub(r"\{[a-z_]+\}", "m1", template)


def new_key(name, roles=""):
    args = [str(RHEMACTL), "auth", "new-key", "--name", name]
    if roles:
        args += ["--roles", roles]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=True).stdout
    key, group = out.splitlines()
    return key, group


def bad_checksum(key):
    last = key[-1]
    return key[:-1] + ("A" if last != "A" else "B")


def auth_config(base, keys, roles, extra=""):
    role_text = ",\n".join(
        f'    {{ name = "{n}"; permissions = [ {", ".join(json.dumps(p) for p in ps)} ]; }}'
        for n, ps in roles.items())
    return (base + "security: {\n  api_keys: { enabled = true; keys = (\n    "
            + ",\n    ".join(keys) + "\n  ); };\n  roles = (\n" + role_text + "\n  );\n"
            + extra + "};\n")


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def role_name(perm):
    return perm.replace(":", "_").replace("*", "all")


@pytest.fixture
def admin_key():
    return new_key("admin", "admin")


def test_role_matrix(daemons, admin_key):
    routes = route_tables()
    perms = sorted({p for _, _, p in routes})
    roles = {"admin": ["*"]}
    for p in perms:
        roles["has_" + role_name(p)] = [p]
        roles["lacks_" + role_name(p)] = [q for q in perms if q != p]
    expired_key, expired_group = new_key("old", "admin")
    expired_group = expired_group.replace(" }", ' expires_at = "2001-01-01T00:00:00Z"; }')
    d = daemons(config=auth_config(memory_config(), [admin_key[1], expired_group], roles)).start()
    admin = bearer(admin_key[0])

    def create(name, roles_):
        s, _, body = d.json("POST", "/v1/auth/keys", {"name": name, "roles": roles_}, admin)
        assert s == 201, body
        return body["key"], body["id"]

    unknown_key = new_key("never-configured", "admin")[0]
    revoked_key, revoked_id = create("revoked", ["admin"])
    assert d.request("DELETE", f"/v1/auth/keys/{revoked_id}", headers=admin).status == 204
    having = {p: create("has " + p, ["has_" + role_name(p)])[0] for p in perms}
    lacking = {p: create("lacks " + p, ["lacks_" + role_name(p)])[0] for p in perms}

    failures = []

    def check(method, template, key_headers, want, what):
        path = concrete(template)
        body = b"{}" if method in ("PUT", "POST", "PATCH") else None
        r = d.request(method, path, body, dict(key_headers, **{"Content-Type": "application/json"}))
        ok = want(r)
        if not ok:
            failures.append(f"{what}: {method} {template} -> {r.status} {r.body[:160]!r}")
        return r

    def is_401(r):
        return (r.status == 401 and r.headers.get("WWW-Authenticate", "").startswith(
            'Bearer realm="rhema"'))

    def is_401_invalid(r):
        return is_401(r) and 'error="invalid_token"' in r.headers.get("WWW-Authenticate", "")

    def passed(r):
        return r.status not in (401, 403)

    for method, template, perm in routes:
        if template in ALWAYS_OPEN:
            check(method, template, {}, lambda r: r.status == 200, "open route, no key")
            continue
        if template in CONSOLE_FILES:
            check(method, template, {}, lambda r: r.status in (200, 301, 404),
                  "console file, no key")
            continue
        check(method, template, {}, is_401, "no key")
        check(method, template, bearer(bad_checksum(admin_key[0])), is_401_invalid, "bad checksum")
        check(method, template, {"X-API-Key": unknown_key}, is_401_invalid, "unknown key")
        check(method, template, bearer(revoked_key), is_401_invalid, "revoked key")
        check(method, template, bearer(expired_key), is_401_invalid, "expired key")
        if perm == "auth:self":  # every key's (whoami)
            check(method, template, bearer(lacking[perm]), passed, "auth:self without roles")
        else:
            check(method, template, bearer(lacking[perm]), lambda r: r.status == 403,
                  f"key lacking {perm}")
        check(method, template, bearer(having[perm]), passed, f"key having {perm}")
    assert not failures, "\n".join(failures)


def test_keys_routes(daemons, admin_key):
    d = daemons(config=auth_config(memory_config(), [admin_key[1]],
                                   {"admin": ["*"], "reader": ["sessions:read"]})).start()
    admin = bearer(admin_key[0])
    # bad input: a clear 400, nothing created
    for body, field in (({"roles": ["reader"]}, "name"), ({"name": 5}, "name"),
                        ({"name": "x", "roles": "reader"}, "roles"),
                        ({"name": "x", "roles": ["ghost"]}, "ghost"),
                        ({"name": "x", "expires_at": "tomorrow"}, "expires_at"),
                        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
                        ({"name": "x", "secret": "s"}, "secret")):
        s, _, err = d.json("POST", "/v1/auth/keys", body, admin)
        assert s == 400 and field in err["error"]["message"], (body, s, err)
    s, _, listing = d.json("GET", "/v1/auth/keys", headers=admin)
    assert s == 200 and [k["source"] for k in listing["items"]] == ["config"]

    r = d.request("POST", "/v1/auth/keys",
                  {"name": "ci", "roles": ["reader"], "expires_at": "2099-01-01T00:00:00Z"},
                  headers=admin)
    assert r.status == 201 and r.headers.get("Cache-Control") == "no-store"
    made = r.json()
    assert set(made) == {"id", "key", "name", "roles", "expires_at", "created_at"}
    assert made["key"].startswith(f"rk_{made['id']}_") and made["roles"] == ["reader"]
    assert made["expires_at"].startswith("2099-01-01T00:00:00")

    s, _, me = d.json("GET", "/v1/auth/whoami", headers={"X-API-Key": made["key"]})
    assert s == 200 and me["id"] == made["id"] and me["name"] == "ci"
    assert me["roles"] == ["reader"] and "sessions:read" in me["permissions"]
    assert "*" not in me["permissions"]

    raw = d.request("GET", "/v1/auth/keys", headers=admin).body.decode()
    assert made["key"] not in raw and made["key"].split("_")[2] not in raw
    assert "hash" not in raw
    ids = [k["id"] for k in json.loads(raw)["items"]]
    assert made["id"] in ids

    # a static key cannot be revoked over HTTP; an unknown one is 404; a bad id 400
    static_id = admin_key[1].split('key_hash = "')[1].split(":")[0]
    assert d.request("DELETE", f"/v1/auth/keys/{static_id}", headers=admin).status == 409
    assert d.request("DELETE", "/v1/auth/keys/ZZZZZZZZZZZZ", headers=admin).status == 404
    assert d.request("DELETE", "/v1/auth/keys/short", headers=admin).status == 400
    # both headers: they must agree
    r = d.request("GET", "/v1/sessions", headers={"Authorization": f"Bearer {admin_key[0]}",
                                                  "X-API-Key": made["key"]})
    assert r.status == 401 and 'error="invalid_request"' in r.headers["WWW-Authenticate"]
    r = d.request("GET", "/v1/sessions", headers={"Authorization": f"Basic {admin_key[0]}"})
    assert r.status == 401
    # revocation on the same node: at once
    assert d.request("DELETE", f"/v1/auth/keys/{made['id']}", headers=admin).status == 204
    assert d.request("GET", "/v1/sessions", headers=bearer(made["key"])).status == 401


def test_rules(daemons, admin_key):
    ops_key, ops_group = new_key("ops", "ops")
    rules = ('  rules = (\n'
             '    { path_prefix = "/v1/keys"; action = "deny"; roles = [ "ops" ]; },\n'
             '    { path_prefix = "/v1/keys/stats"; methods = [ "GET" ]; action = "allow"; '
             'roles = [ "ops" ]; },\n'
             '    { path_prefix = "/v1/sessions/frozen"; methods = [ "PUT", "DELETE" ]; '
             'action = "deny"; }\n  );\n')
    d = daemons(config=auth_config(memory_config(), [admin_key[1], ops_group],
                                   {"admin": ["*"], "ops": ["*"]}, rules)).start()
    ops = bearer(ops_key)
    assert d.request("POST", "/v1/keys/rotate", b"{}", ops).status == 403
    assert d.request("GET", "/v1/keys/stats", headers=ops).status not in (401, 403)
    # the frozen session: nobody may write it, reading is fine
    for k in (ops, bearer(admin_key[0])):
        assert d.request("PUT", "/v1/sessions/frozen", {"topic": "t"}, k).status == 403
        assert d.request("GET", "/v1/sessions/frozen", headers=k).status == 404
        assert d.request("PUT", "/v1/sessions/frozen2",
                         {"topic": "t", "participants": ["a"]}, k).status in (200, 201)


def test_revocation_on_one_node_refused_on_the_other_within_a_second(daemons, tmp_path,
                                                                      admin_key):
    require_plugin("sqlite")
    config = auth_config(sqlite_config(tmp_path / "shared.db"), [admin_key[1]],
                         {"admin": ["*"], "reader": ["sessions:read"]})
    a = daemons("a", config=config).start()
    b = daemons("b", config=config).start()
    admin = bearer(admin_key[0])
    s, _, made = a.json("POST", "/v1/auth/keys", {"name": "agent", "roles": ["reader"]}, admin)
    assert s == 201, made
    key = bearer(made["key"])
    # B sees the new key (it reads the shared backend), on every worker
    assert wait_until(lambda: b.request("GET", "/v1/sessions", headers=key).status == 200, 5)
    conn = b.connection()  # keep-alive: the same worker of B every time
    try:
        for _ in range(20):
            assert b.request("GET", "/v1/sessions", headers=key, conn=conn).status == 200
        assert a.request("DELETE", f"/v1/auth/keys/{made['id']}", headers=admin).status == 204
        revoked_at = time.monotonic()
        # from one second after the revocation on A, B refuses it on every connection
        time.sleep(max(0.0, revoked_at + 1.0 - time.monotonic()))
        assert b.request("GET", "/v1/sessions", headers=key, conn=conn).status == 401
        for _ in range(8):
            r = b.request("GET", "/v1/sessions", headers=key)
            assert r.status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    finally:
        conn.close()


def test_new_key_output_pasted_into_a_config_works(daemons, tmp_path):
    out = subprocess.run([str(RHEMACTL), "auth", "new-key", "--name", 'ci "bot"',
                          "--roles", "reader,writer"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 2 and re.fullmatch(r"rk_[0-9A-Za-z]{12}_[0-9A-Za-z]{28}", lines[0])
    assert lines[1].startswith('{ name = "ci \\"bot\\""; key_hash = "')
    assert lines[0] not in lines[1] and lines[0].split("_")[2] not in lines[1]
    config = auth_config(memory_config(), [lines[1]],
                         {"reader": ["sessions:read"], "writer": ["sessions:write"]})
    conf = tmp_path / "pasted.conf"
    conf.write_text(config)
    t = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert t.returncode == 0, t.stderr
    d = daemons(config=config).start()
    s, _, me = d.json("GET", "/v1/auth/whoami", headers=bearer(lines[0]))
    assert s == 200 and me["name"] == 'ci "bot"' and me["roles"] == ["reader", "writer"]
    assert me["source"] == "config"
    assert d.request("PUT", "/v1/sessions/s1", {"topic": "t", "participants": ["a"]},
                     bearer(lines[0])).status in (200, 201)
    # bad usage
    r = subprocess.run([str(RHEMACTL), "auth", "new-key", "--roles", "x"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([str(RHEMACTL), "auth", "new-key", "--name", "x", "--roles", "a b"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "'a b'" in r.stderr


@pytest.mark.parametrize("extra,message", [
    ('  roles = ( { name = "r"; permissions = [ "sessions" ]; } );\n', "'sessions' is not a permission"),
    ('  roles = ( { name = "r"; } );\n  rules = ( { path_prefix = "/v1"; action = "deny"; '
     'roles = [ "ghost" ]; } );\n', "'ghost'"),
    ('  api_keys = { keys = ( { name = "k"; key_hash = "nothex"; } ); };\n', "not a key hash"),
    ('  api_keys = { open_routes = [ "/v1/sessions" ]; };\n', "only health and metrics"),
    ('  api_keys = { open_routes = [ "/nowhere" ]; };\n', "not a GET route"),
])
def test_bad_security_settings_stop_startup(tmp_path, extra, message):
    conf = tmp_path / "bad.conf"
    conf.write_text(memory_config() + "security: {\n" + extra + "};\n")
    t = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert t.returncode != 0 and message in t.stderr, t.stderr


def test_unknown_role_of_a_static_key_stops_startup(tmp_path):
    _, group = new_key("k", "ghost")
    conf = tmp_path / "bad.conf"
    conf.write_text(auth_config(memory_config(), [group], {"admin": ["*"]}))
    t = run_rhemad(["-t", "-c", str(conf), "-P", str(PLUGIN_DIR)])
    assert t.returncode != 0 and "role 'ghost' is not defined" in t.stderr, t.stderr


def test_open_health(daemons, admin_key):
    closed = daemons("closed", config=auth_config(memory_config(), [admin_key[1]],
                                                  {"admin": ["*"]})).start()
    assert closed.request("GET", "/health").status == 401
    assert closed.request("GET", "/health/ready").status == 200
    opened = daemons("opened", config=auth_config(
        memory_config(), [admin_key[1]], {"admin": ["*"]})
        .replace("enabled = true;", 'enabled = true; open_routes = [ "/health" ];')).start()
    assert opened.request("GET", "/health").status == 200
    assert opened.request("GET", "/v1/stats").status == 401


def test_protected_mode(daemons):
    d = daemons().start()
    assert "protected mode" in d.log() and "[warn]" in d.log()
    # loopback clients are answered with keys off
    assert d.request("GET", "/v1/sessions").status == 200
    s, _, me = d.json("GET", "/v1/auth/whoami")
    assert s == 200 and me["authentication"] is False
    allowed = daemons("open", overrides=["security.allow_unauthenticated_remote=true"]).start()
    assert "allow_unauthenticated_remote = true" in allowed.log()


def test_cross_site_write_without_origin_is_refused(daemon):
    r = daemon.request("PUT", "/v1/sessions/x", {"topic": "t", "participants": ["a"]},
                       headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403 and "cross-site" in r.json()["error"]["message"]
    assert daemon.request("GET", "/v1/sessions/x").status == 404, "nothing changed"
    assert daemon.request("GET", "/v1/sessions/x",
                          headers={"Sec-Fetch-Site": "cross-site"}).status == 404
    r = daemon.request("PUT", "/v1/sessions/x", {"topic": "t", "participants": ["a"]},
                       headers={"Sec-Fetch-Site": "same-origin"})
    assert r.status in (200, 201)


def test_sample_config_allows_no_origin_by_default():
    text = (TOP_SRCDIR / "etc" / "rhemad.conf").read_text()
    active = [l for l in text.splitlines() if "origins" in l and not l.strip().startswith("#")]
    assert not any('"*"' in l for l in active), active


def test_reload_says_security_changes_need_a_restart(daemons, admin_key):
    import signal
    roles = {"admin": ["*"]}
    d = daemons(config=auth_config(memory_config(), [admin_key[1]], roles)).start()
    mark = d.log_size()
    d.send(signal.SIGHUP)
    assert d.wait_log("reload: configuration re-read", since=mark)
    assert "security settings" not in d.log()[mark:], "nothing changed"
    mark = d.log_size()
    d.write_config(auth_config(memory_config(), [admin_key[1]],
                               {"admin": ["*"], "reader": ["sessions:read"]}))
    d.send(signal.SIGHUP)
    assert d.wait_log("reload: security settings (keys, roles, rules, rate limits) changed; restart to apply",
                      since=mark)
    # the running settings stay: the admin key still works
    assert d.request("GET", "/v1/auth/whoami", headers=bearer(admin_key[0])).status == 200
