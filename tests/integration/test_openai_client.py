"""
The official `openai` npm client (issue 10 "Tests that must exist": a real
client that nobody here wrote) against rhemad in front of the fake
upstream: models, chat, streaming chat (for await over the stream),
embeddings, and a stream cut by the upstream ending in an error the
client raises.  tools/install-deps installs node and the package into
/opt/rhema-test-node (RHEMA_NODE_MODULES overrides where node_modules is).
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_ai_gateway import start

HERE = Path(__file__).resolve().parent
NODE_MODULES = Path(os.environ.get("RHEMA_NODE_MODULES") or "/opt/rhema-test-node/node_modules")


def test_openai_npm_client(daemons, fake_openai):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed (tools/install-deps installs it)")
    if not (NODE_MODULES / "openai" / "package.json").exists():
        pytest.skip(f"the npm package openai is not in {NODE_MODULES} (tools/install-deps)")
    a, b = fake_openai("a"), fake_openai("b")
    b.default({"chunks": 3, "cut_after": 1})
    d = start(daemons, [{"name": "a", "base_url": a.url}, {"name": "b", "base_url": b.url}],
              [{"name": "gpt", "upstream": "a", "upstream_model": "fake-model"},
               {"name": "gpt-cut", "upstream": "b"},
               {"name": "embed", "upstream": "a"}])
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    p = subprocess.run([node, str(HERE / "openai_client.mjs"), f"http://127.0.0.1:{d.port}/v1",
                        "gpt", "embed"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr + d.log()[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["models"] == ["gpt", "gpt-cut", "embed"]
    assert out["chat"] == "echo: hello from node"
    assert out["stream"] == ["tok0 ", "tok1 ", "tok2 "]
    assert out["embeddings"] == [[0.25, -0.5, 0.0], [0.25, -0.5, 1.0]]
    # the cut stream: the client raised the error rhemad sent (event: error)
    assert out["cut_error"] and "ended the stream before its end" in out["cut_error"], out
    paths = [r["path"] for r in a.requests]
    assert paths == ["/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings"]
    assert a.requests[1]["body"]["stream"] is True
