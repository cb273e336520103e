"""
doc/openapi.yaml: rhemad serves it (GET /v1/openapi.yaml), and the document
itself is sound.  Debian 12 ships no OpenAPI 3.1 validator
(python3-openapi-spec-validator is not packaged) nor the 3.1 meta-schema,
so the document is checked structurally here: every schema is a valid JSON
Schema 2020-12 (jsonschema's check_schema), every $ref resolves, every
{param} of a path is declared as a path parameter, operationIds are unique,
every operation answers an error and every response has a description.
That the document lists exactly the router's routes is
tests/unit/test_openapi.c; that the tests' traffic matches its schemas is
openapi_check.py, run on every request of the integration tests.
"""

import re

import pytest

from conftest import TOP_SRCDIR

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

SPEC_TEXT = (TOP_SRCDIR / "doc" / "openapi.yaml").read_text()
SPEC = yaml.safe_load(SPEC_TEXT)
METHODS = ("get", "put", "post", "delete", "patch")


def walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def resolve(ref):
    assert ref.startswith("#/"), ref
    node = SPEC
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"$ref {ref} does not resolve"
        node = node[part]
    return node


def test_served_document_is_the_file(daemon):
    r = daemon.request("GET", "/v1/openapi.yaml")
    assert r.status == 200
    assert r.headers.get("Content-Type") == "application/yaml"
    assert r.body.decode() == SPEC_TEXT
    r = daemon.request("GET", "/v1/openapi.yaml?x=1")
    assert r.status == 400


def test_version_and_security_schemes():
    assert re.fullmatch(r"3\.1\.\d+", SPEC["openapi"])
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"


def test_every_schema_is_valid_json_schema():
    for name, schema in SPEC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    for path, node in walk(SPEC["paths"]):
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            jsonschema.Draft202012Validator.check_schema(node["schema"])


def test_every_ref_resolves():
    refs = [n["$ref"] for _, n in walk(SPEC) if isinstance(n, dict) and "$ref" in n]
    assert len(refs) > 100
    for ref in refs:
        resolve(ref)


def test_operations_are_complete():
    seen = set()
    for template, item in SPEC["paths"].items():
        assert template.startswith("/")
        common = [resolve(p["$ref"]) if "$ref" in p else p for p in item.get("parameters", [])]
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            where = f"{method.upper()} {template}"
            assert op.get("operationId") and op["operationId"] not in seen, where
            seen.add(op["operationId"])
            params = common + [resolve(p["$ref"]) if "$ref" in p else p
                               for p in op.get("parameters", [])]
            declared = {p["name"] for p in params if p["in"] == "path"}
            wanted = set(re.findall(r"\{([a-z_]+)\}", template))
            assert declared == wanted, f"{where}: path parameters {declared} != {wanted}"
            for p in params:
                if p["in"] == "path":
                    assert p.get("required") is True, where
            responses = op["responses"]
            assert "default" in responses or any(c.startswith(("4", "5")) for c in responses), where
            for code, resp in responses.items():
                assert code == "default" or re.fullmatch(r"[1-5]\d\d", code), f"{where} {code}"
                resp = resolve(resp["$ref"]) if "$ref" in resp else resp
                assert resp.get("description"), f"{where} {code}: no description"
        assert set(item) <= set(METHODS) | {"parameters", "summary", "description"}, template


def test_ai_routes_answer_openai_errors():
    for template in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        responses = SPEC["paths"][template]["post"]["responses"]
        for code in ("400", "404", "502", "504"):
            assert responses[code]["$ref"] == "#/components/responses/OpenAIError"


def test_validation_catches_a_wrong_answer():
    """openapi_check fails an answer that does not match (so it can fail)."""
    import openapi_check
    body = b'{"status": "alive", "extra": 1}'
    openapi_check.check("GET", "/health/live", {}, None, 200,
                        {"Content-Type": "application/json"}, body)
    with pytest.raises(AssertionError, match=r"GET /health/live -> 200 \(response\).*status"):
        openapi_check.check("GET", "/health/live", {}, None, 200,
                            {"Content-Type": "application/json"}, b'{"nostatus": 1}')
    with pytest.raises(AssertionError,
                       match=r"/v1/cluster/leader -> 200.*schemas/Leader/properties/epoch"):
        openapi_check.check("GET", "/v1/cluster/leader", {}, None, 200,
                            {"Content-Type": "application/json"},
                            b'{"leader": null, "epoch": "x", "is_leader": true}')
    with pytest.raises(AssertionError, match=r"GET /health/ready -> 418 \(response\)"):
        openapi_check.check("GET", "/health/ready", {}, None, 418,
                            {"Content-Type": "application/json"}, b'{"status": "ok"}')
    with pytest.raises(AssertionError, match=r"PUT /v1/sessions/\{id\} -> 201 \(request\)"):
        openapi_check.check("PUT", "/v1/sessions/s1", {"Content-Type": "application/json"},
                            b'{"topic": 5}', 201, {}, b"")
