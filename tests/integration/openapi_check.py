"""
Check the integration tests' traffic against doc/openapi.yaml.

conftest.Daemon.request() hands every exchange (method, path, request
headers and body, status, response headers and body) to check(), which
raises AssertionError -- failing the test that made the request -- when
  - the answer's status is not documented for the route (nor a default),
  - a JSON answer does not match the schema of its status and media type,
  - a request the daemon accepted (2xx) has a JSON body that does not match
    the operation's requestBody schema (refused requests are what the tests
    send on purpose to see them refused: they are not checked),
naming the route and the schema path that failed.  Requests to paths that
are no route template (404 tests, /metrics at another metrics_path) are
not checked.

RHEMA_OPENAPI_VALIDATE: "0" turns the check off; "1" requires it (an error
when python3-jsonschema or python3-yaml is missing); unset: on when both
are installed (tools/install-deps installs them; CI runs with them).
"""

import json
import os
import re
from pathlib import Path

_SPEC_PATH = Path(__file__).resolve().parents[2] / "doc" / "openapi.yaml"
_state = {}


def _load():
    if "spec" in _state:
        return _state["spec"]
    mode = os.environ.get("RHEMA_OPENAPI_VALIDATE", "")
    spec = None
    if mode != "0":
        try:
            import jsonschema  # noqa: F401
            import yaml
        except ImportError as e:
            if mode == "1":
                raise AssertionError(f"RHEMA_OPENAPI_VALIDATE=1 but {e}: install "
                                     "python3-jsonschema and python3-yaml")
        else:
            spec = yaml.safe_load(_SPEC_PATH.read_text())
            routes = []
            for template, item in spec["paths"].items():
                rx = re.sub(r"\\\{[a-z_]+\\\}", "[A-Za-z0-9._:-]+", re.escape(template))
                routes.append((re.compile(rx + r"\Z"), template, item))
            # literal templates before those with a {param}, as the router matches
            routes.sort(key=lambda r: "{" in r[1])
            _state["routes"] = routes
    _state["spec"] = spec
    return spec


def _deref(spec, obj):
    while isinstance(obj, dict) and "$ref" in obj and len(obj) == 1:
        node = spec
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node[part]
        obj = node
    return obj


def _validate(spec, schema, instance, where):
    import jsonschema
    # the schema is checked inside the whole document, so its $refs resolve
    resolver = jsonschema.RefResolver("", spec)
    validator = jsonschema.Draft202012Validator(schema, resolver=resolver)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        at = "/".join(str(p) for p in e.absolute_path) or "(the body)"
        schema_path = "/".join(str(p) for p in e.absolute_schema_path)
        if "$ref" in schema:  # name the component the path starts from
            schema_path = f"{schema['$ref']}/{schema_path}"
        raise AssertionError(f"openapi: {where}: the body at {at} fails schema "
                             f"{schema_path}: {e.message[:300]}")


def _media(headers):
    ct = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    return ct


def check(method, path, req_headers, req_body, status, resp_headers, resp_body):
    spec = _load()
    if spec is None or method in ("OPTIONS",):
        return
    path = path.split("?", 1)[0]
    for rx, template, item in _state["routes"]:
        if rx.match(path):
            break
    else:
        return
    op_method = "get" if method == "HEAD" else method.lower()
    op = item.get(op_method)
    where = f"{method} {template} -> {status}"
    if op is None:
        if status < 400:
            raise AssertionError(f"openapi: {method} {path} answered {status}, but "
                                 f"doc/openapi.yaml has no {op_method} for {template}")
        return
    responses = op["responses"]
    resp = responses.get(str(status)) or responses.get("default")
    if resp is None:
        raise AssertionError(f"openapi: {where}: status {status} is not documented "
                             f"(paths/{template}/{op_method}/responses)")
    resp = _deref(spec, resp)
    if resp_body and method != "HEAD" and status not in (204, 304):
        media = _media(resp_headers)
        content = resp.get("content") or {}
        if media == "application/json":
            if "application/json" not in content:
                raise AssertionError(f"openapi: {where}: a JSON answer, but the response "
                                     f"'{resp.get('description', '')[:60]}' has no "
                                     "application/json content")
            try:
                body = json.loads(resp_body)
            except ValueError:
                raise AssertionError(f"openapi: {where}: Content-Type application/json "
                                     "but the body is not JSON")
            _validate(spec, content["application/json"].get("schema", {}), body,
                      f"{where} (response)")
        elif media and content and media not in content:
            raise AssertionError(f"openapi: {where}: Content-Type {media} is not one of "
                                 f"{sorted(content)}")
    if 200 <= status < 300 and req_body:
        rb = _deref(spec, op.get("requestBody"))
        if rb is None:
            return
        media = _media(req_headers) or "application/json"
        content = rb.get("content") or {}
        if media == "application/json" and "application/json" in content:
            try:
                body = json.loads(req_body)
            except ValueError:
                return
            _validate(spec, content["application/json"].get("schema", {}), body,
                      f"{where} (request)")
