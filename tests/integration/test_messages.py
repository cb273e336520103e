"""
POST /v1/messages/compress and /decompress (DESIGN.md §3, §6): raw bytes in
and out, the frame readable without the writer's settings, and every bad
frame refused with a clear 400 (413 when it announces too much).
"""

import json
import os
import struct
import time

import pytest

from conftest import PLUGIN_DIR, Daemon, memory_config

CODECS = ["lz4", "zstd", "gzip", "snappy"]


def codec_built(name):
    return (PLUGIN_DIR / f"compress_{name}.so").exists()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    built = [c for c in CODECS if codec_built(c)]
    if "zstd" not in built:
        pytest.skip("the zstd compression plugin was not built")
    load = ", ".join(f'"{c}"' for c in built)
    conf = (memory_config() +
            f'plugins: {{ load = ( "memory", {load} ); }};\n'
            'advanced_features: { compression: { threshold_bytes = 256;\n'
            '  max_decompressed_bytes = 1048576; }; };\n')
    d = Daemon(tmp_path_factory.mktemp("messages"), name="rhemad-messages", config=conf).start()
    d.codecs = built
    yield d
    d.kill()


def message(n=40):
    msgs = [{"id": f"m-{i}", "message_type": "StatusUpdate", "priority": "Normal",
             "sender_id": "agent-7", "content": f"step {i} done"} for i in range(n)]
    return json.dumps(msgs).encode()


def frame_fields(frame):
    assert frame[:2] == b"RZ" and frame[2] == 1
    return frame[3], frame[4], struct.unpack("<Q", frame[5:13])[0]


def test_compress_default_codec_round_trips(srv):
    data = message()
    r = srv.request("POST", "/v1/messages/compress", data)
    assert r.status == 200, r.body
    assert r.headers.get("Content-Type") == "application/octet-stream"
    codec, _, orig = frame_fields(r.body)
    assert codec == 2 and orig == len(data)  # zstd, the default
    assert r.headers.get("X-Rhema-Codec") == "zstd"
    assert len(r.body) < len(data) / 2
    back = srv.request("POST", "/v1/messages/decompress", r.body)
    assert back.status == 200 and back.body == data


def test_every_loaded_codec_and_level(srv):
    data = message()
    for codec in srv.codecs:
        r = srv.request("POST", f"/v1/messages/compress?algorithm={codec}", data)
        assert r.status == 200, (codec, r.body)
        assert r.headers.get("X-Rhema-Codec") == codec
        back = srv.request("POST", "/v1/messages/decompress", r.body)
        assert back.status == 200 and back.body == data, codec
    r = srv.request("POST", "/v1/messages/compress?algorithm=zstd&level=19", data)
    assert r.status == 200
    assert srv.request("POST", "/v1/messages/decompress", r.body).body == data


def test_small_and_incompressible_messages_are_stored(srv):
    small = b'{"id":"m","content":"hi"}'
    r = srv.request("POST", "/v1/messages/compress", small)
    assert r.status == 200 and frame_fields(r.body)[0] == 0 and r.body[13:] == small
    noise = os.urandom(4096)
    r = srv.request("POST", "/v1/messages/compress", noise)
    assert r.status == 200 and frame_fields(r.body)[0] == 0  # adaptive: not worth it
    assert srv.request("POST", "/v1/messages/decompress", r.body).body == noise
    r = srv.request("POST", "/v1/messages/compress?algorithm=none", message())
    assert r.status == 200 and frame_fields(r.body)[0] == 0


def test_bad_requests(srv):
    r = srv.request("POST", "/v1/messages/compress?algorithm=brotli", b"x")
    assert r.status == 400 and "brotli" in r.json()["error"]["message"]
    r = srv.request("POST", "/v1/messages/compress?algorithm=zstd&level=999", b"x")
    assert r.status == 400 and "level 999" in r.json()["error"]["message"]
    r = srv.request("POST", "/v1/messages/compress?level=abc", b"x")
    assert r.status == 400
    r = srv.request("POST", "/v1/messages/compress?colour=red", b"x")
    assert r.status == 400 and "colour" in r.json()["error"]["message"]
    r = srv.request("GET", "/v1/messages/compress")
    assert r.status == 405 and "POST" in r.headers.get("Allow")


def test_tampered_truncated_and_oversized_frames(srv):
    data = message()
    frame = srv.request("POST", "/v1/messages/compress", data).body
    cases = {
        "empty": b"",
        "truncated header": frame[:7],
        "truncated payload": frame[:-5],
        "bad magic": b"XZ" + frame[2:],
        "bad version": frame[:2] + b"\x09" + frame[3:],
        "unknown codec": frame[:3] + b"\xc8" + frame[4:],
        "wrong length": frame[:5] + struct.pack("<Q", len(data) + 1) + frame[13:],
    }
    for what, bad in cases.items():
        r = srv.request("POST", "/v1/messages/decompress", bad)
        assert r.status == 400, (what, r.status, r.body)
        err = r.json()["error"]
        assert err["code"] == "bad_frame" and err["message"], what
    huge = frame[:5] + struct.pack("<Q", 1 << 30) + frame[13:]
    r = srv.request("POST", "/v1/messages/decompress", huge)
    assert r.status == 413 and "max_decompressed_bytes" in r.json()["error"]["message"]


def test_stats_and_alerts_follow_the_thresholds(tmp_path):
    if not codec_built("zstd"):
        pytest.skip("zstd not built")
    conf = (memory_config() +
            'advanced_features: { compression: { threshold_bytes = 256; };\n'
            '  performance_monitoring: { sample_interval_seconds = 1;\n'
            '    thresholds: { min_compression_ratio = 1.5; }; }; };\n')
    d = Daemon(tmp_path, name="rhemad-perf", config=conf).start()
    try:
        def alerts():
            return d.json("GET", "/v1/alerts")[2]

        # small messages are stored as is on purpose: never an alert
        for _ in range(50):
            assert d.request("POST", "/v1/messages/compress", b'{"m":1}').status == 200
        time.sleep(2.2)
        assert alerts()["active"] == []
        # incompressible data forced through zstd: the ratio drops below 1.5
        for _ in range(20):
            d.request("POST", "/v1/messages/compress?algorithm=zstd", os.urandom(2048))
        deadline = time.time() + 5
        while time.time() < deadline and not alerts()["active"]:
            time.sleep(0.2)
        active = alerts()["active"]
        assert [a["metric"] for a in active] == ["compression_ratio"], active
        # compressible messages bring it back: resolved
        for _ in range(50):
            d.request("POST", "/v1/messages/compress", message())
        deadline = time.time() + 5
        while time.time() < deadline and alerts()["active"]:
            time.sleep(0.2)
        a = alerts()
        assert a["active"] == [] and a["history"][0]["resolved_at"] is not None
        st = d.json("GET", "/v1/stats")[2]
        perf = st["performance"]
        assert perf["totals"]["messages_stored_as_is"] >= 50
        assert perf["totals"]["messages_compressed"] >= 70
        assert st["storage"]["backend"] == "memory"
    finally:
        d.kill()
