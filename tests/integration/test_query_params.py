"""
Query parameters are checked one way on every route (core/api/query.c,
issue 15): an unknown parameter and a parameter given more than once are
400 invalid_field naming the parameter -- before, only consensus refused a
repeated one, and the other routes silently used the first value.
"""

import pytest

from conftest import memory_config


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from conftest import Daemon
    d = Daemon(tmp_path_factory.mktemp("query"), config=memory_config()).start()
    yield d
    d.stop()


def assert_400(st, body, param, what):
    assert st == 400, (st, body)
    assert body["error"]["code"] == "invalid_field", body
    msg = body["error"]["message"]
    assert f"'{param}'" in msg and what in msg, msg


@pytest.mark.parametrize("method,path,param", [
    ("GET", "/v1/sessions?limit=1&limit=2", "limit"),
    ("GET", "/v1/sessions?status=Active&status=Paused", "status"),
    ("GET", "/v1/agents?capability=a&capability=b", "capability"),
    ("GET", "/v1/agents/a1/transitions?cursor=x&cursor=y", "cursor"),
    ("GET", "/v1/configurations/c1?version=1&version=1", "version"),
    ("GET", "/v1/configurations/c1/versions?limit=5&limit=5", "limit"),
    ("GET", "/v1/services?name=a&name=b", "name"),
    ("GET", "/v1/services/api/select?key=a&key=b", "key"),
    ("GET", "/v1/consensus?limit=1&limit=2", "limit"),
    ("GET", "/v1/consensus/n1/entries?from=1&from=2", "from"),
])
def test_repeated_parameter_is_400_everywhere(srv, method, path, param):
    st, _, body = srv.json(method, path)
    assert_400(st, body, param, "more than once")


def test_repeated_parameter_on_compress_is_400(srv):
    r = srv.request("POST", "/v1/messages/compress?algorithm=none&algorithm=none", b"x")
    assert_400(r.status, r.json(), "algorithm", "more than once")


@pytest.mark.parametrize("path", ["/v1/sessions?nope=1", "/v1/agents?nope=1",
                                  "/v1/services?nope=1", "/v1/consensus?nope=1",
                                  "/v1/keys/stats?nope=1"])
def test_unknown_parameter_is_400(srv, path):
    st, _, body = srv.json("GET", path)
    assert_400(st, body, "nope", "unknown parameter")


@pytest.mark.parametrize("value", ["0", "-1", "+1", "1x", "", "99999999999999999999999"])
def test_limit_is_plain_digits_in_range(srv, value):
    for path in ("/v1/sessions", "/v1/agents", "/v1/services", "/v1/consensus"):
        st, _, body = srv.json("GET", f"{path}?limit={value}")
        assert_400(st, body, "limit", "expected an integer from 1 to")


@pytest.mark.parametrize("path", ["/v1/sessions?status=Active%00x",
                                  "/v1/sessions?cursor=s-1%00zz",
                                  "/v1/agents?capability=a%00b"])
def test_encoded_nul_in_a_query_value_is_400(srv, path):
    # decoded, %00 would end the value early: the request would run with
    # another value than the client sent (found reading the fuzz harness)
    st, _, body = srv.json("GET", path)
    assert st == 400, (st, body)
    assert body["error"]["code"] == "bad_query", body
    assert "%00" in body["error"]["message"], body
