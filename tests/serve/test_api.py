"""The prompt API in-process: models, completions, SSE streaming, per-request adapters, 4xx, auth."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from gt_ext.errors import GtExtError
from gt_ext.models.refs import ResolvedModel
from gt_ext.serve.api import create_app
from gt_ext.serve.params import SamplingParams

MSG = [{"role": "user", "content": "Report the patrol status."}]


@pytest.fixture(scope="module")
def served(adapters):
    from gt_ext.serve.generate import Generator

    gen = Generator("tiny-llama", [(adapters["a"], 1.0)])
    model = ResolvedModel(ref="tiny-witness:1", base_model="tiny-llama", adapters=[(adapters["a"], 1.0)])

    def lookup(ref, base):
        if ref == "patrol-adapter:2":
            return [adapters["b"]]
        raise GtExtError(f"model {ref!r} is not served here and not in the registry")

    return gen, model, lookup


@pytest.fixture(scope="module")
def client(served):
    gen, model, lookup = served
    with TestClient(create_app(gen, model, registry_lookup=lookup)) as c:
        yield c


def post(client, **body):
    body.setdefault("model", "tiny-witness:1")
    body.setdefault("messages", MSG)
    return client.post("/v1/chat/completions", json=body)


def sse_events(resp) -> list:
    out = []
    for line in resp.text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_models_lists_served_model_and_adapters(client):
    data = client.get("/v1/models").json()["data"]
    ids = {d["id"]: d for d in data}
    assert ids["tiny-witness:1"]["kind"] == "served"
    assert ids["a"]["kind"] == "adapter"


def test_completion_matches_generator(client, served):
    gen = served[0]
    r = post(client, temperature=0, max_tokens=12)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == gen.chat(MSG, SamplingParams(max_new_tokens=12))
    assert body["usage"]["completion_tokens"] <= 12
    assert body["usage"]["prompt_tokens"] == gen.count_tokens(MSG)


def test_streaming_sse(client):
    full = post(client, temperature=0, max_tokens=12).json()["choices"][0]["message"]["content"]
    r = post(client, temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    ev = sse_events(r)
    assert ev[-1] == "[DONE]"
    chunks = [e for e in ev[:-1] if e["choices"]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == full
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) > 1  # really streamed
    assert ev[-2]["usage"]["completion_tokens"] > 0


def test_adapters_switched_per_request(client, served, adapters):
    gen = served[0]
    p = SamplingParams(max_new_tokens=10)

    def text(**kw):
        r = post(client, temperature=0, max_tokens=10, **kw)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    default = text()
    base = text(adapters=[])
    other = text(model="patrol-adapter:2")
    mixed = text(adapters=["a=0.5", {"name": "patrol-adapter:2", "weight": 0.5}])
    assert default == gen.chat(MSG, p, adapters=[(adapters["a"], 1.0)])
    assert base == gen.chat(MSG, p, adapters=[])
    assert other == gen.chat(MSG, p, adapters=[(adapters["b"], 1.0)])
    assert mixed == gen.chat(MSG, p, adapters=[(adapters["a"], 0.5), (adapters["b"], 0.5)])
    assert len({default, base, other}) == 3
    assert text() == default  # back to the default stack


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        (dict(messages=[]), 400, "non-empty"),
        (dict(messages=[{"role": "robot", "content": "x"}]), 400, "role"),
        (dict(temperature=3), 400, "temperature"),
        (dict(max_tokens=0), 400, "max_tokens"),
        (dict(n=2), 400, "n"),
        (dict(model="nope:1"), 404, "not served here"),
        (dict(adapters=["missing-adapter"]), 404, "not served here"),
        (dict(adapters=[{"weight": 1}]), 400, "needs a name"),
        (dict(adapters=["a=heavy"]), 400, "not a number"),
        (dict(max_tokens=100000), 400, "context"),
        (dict(stop=[""]), 400, "stop"),
        (dict(choices={"action": []}), 400, "choices"),
        (dict(choices={"action": "wait"}), 400, "choices"),
    ],
)
def test_bad_requests_get_4xx_with_message(client, body, status, fragment):
    r = post(client, **body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_missing_body_fields(client):
    r = client.post("/v1/chat/completions", json={"messages": MSG})
    assert r.status_code == 400
    assert "model" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_bearer_token(served):
    gen, model, lookup = served
    with TestClient(create_app(gen, model, token="s3cret-token-0123456789abcdef0123456789", registry_lookup=lookup)) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/v1/chat/completions", json={"model": "tiny-witness:1", "messages": MSG, "max_tokens": 2})
        assert r.status_code == 401
        assert "s3cret" not in r.text
        ok = c.get("/v1/models", headers={"Authorization": "Bearer s3cret-token-0123456789abcdef0123456789"})
        assert ok.status_code == 200


def test_cli_refuses_non_loopback_without_token(monkeypatch, capsys):
    from gt_ext.cli import main

    monkeypatch.delenv("GT_EXT_API_TOKEN", raising=False)
    assert main(["serve", "--model", "base:tiny-llama", "--host", "0.0.0.0"]) == 2
    assert "needs a bearer token" in capsys.readouterr().err


def test_queue_full_is_503(served):
    gen, model, lookup = served
    app = create_app(gen, model, registry_lookup=lookup, max_batch=1, max_queue=1)
    with TestClient(app) as c:
        state = app.state.api
        with gen.lock:  # hold the model: the worker blocks on the first job, the queue fills
            import threading

            results = []
            ts = [threading.Thread(target=lambda: results.append(post(c, max_tokens=2).status_code))
                  for _ in range(4)]
            for t in ts:
                t.start()
            import time

            deadline = time.monotonic() + 30
            while 503 not in results and time.monotonic() < deadline:
                time.sleep(0.05)
        for t in ts:
            t.join(60)
        assert 503 in results
        assert 200 in results
        assert state.batcher._thread.is_alive()
