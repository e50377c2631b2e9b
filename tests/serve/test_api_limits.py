"""The prompt API's limits: each finding of issue #20 ("API") replayed against the real app.

In-process (TestClient) for validation, sizes, tokens and per-client limits; a real uvicorn on
127.0.0.1 for what needs a real connection (a client that goes away).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from gt_ext.errors import GtExtError
from gt_ext.models.refs import ResolvedModel
from gt_ext.serve.api import MIN_TOKEN_CHARS, ApiLimits, RateLimiter, create_app
from gt_ext.serve.batcher import Batcher, Job
from gt_ext.serve.params import SamplingParams

MSG = [{"role": "user", "content": "Report the patrol status."}]
MODEL = ResolvedModel(ref="base:tiny-llama", base_model="tiny-llama", adapters=[])
TOKEN = "t" * MIN_TOKEN_CHARS
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def body(**kw):
    kw.setdefault("model", "base:tiny-llama")
    kw.setdefault("messages", MSG)
    kw.setdefault("max_tokens", 4)
    return kw


@pytest.fixture(scope="module")
def client(gen):
    with TestClient(create_app(gen, MODEL)) as c:
        yield c


def _held(gen, fn, n):
    """Run `fn` n times in threads while the model is held, so their requests meet in one batch."""
    results: list = [None] * n
    with gen.lock:
        ts = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn(i))) for i in range(n)]
        for t in ts:
            t.start()
        time.sleep(1.0)  # all of them validated and queued behind the held model
    for t in ts:
        t.join(120)
    return results


def test_a_bad_request_fails_alone(gen, client):
    """max_tokens 1e9 used to give its batch-mates 400, seed 1e23 gave them 500."""
    bodies = [body(), body(max_tokens=1e9), body(seed=1e23), body(temperature=0.5, seed=7)]
    res = _held(gen, lambda i: client.post("/v1/chat/completions", json=bodies[i]), len(bodies))
    assert [r.status_code for r in res] == [200, 400, 400, 200], [r.text for r in res]
    assert "max_tokens" in res[1].json()["error"]["message"] and res[1].json()["error"]["param"] == "max_tokens"
    assert "seed" in res[2].json()["error"]["message"] and res[2].json()["error"]["param"] == "seed"


def test_request_slipping_past_validation_fails_alone(gen):
    """Defence in depth: a request that slips past validation only fails itself."""
    good = gen.request(MSG, SamplingParams(max_new_tokens=3))
    bad = gen.request(MSG, SamplingParams(max_new_tokens=3, temperature=1.0))
    bad.params.seed = 10**30  # bypasses validate(): torch refuses it when the request joins
    outcome: dict[str, object] = {}
    batcher = Batcher(gen, max_batch=4)
    done = threading.Event()

    def finish(name):
        def on_done(err):
            outcome[name] = err
            if len(outcome) == 2:
                done.set()
        return on_done

    with batcher._cv:  # both queued before the worker looks: they join the batch together
        batcher.submit(Job(good, lambda p: None, finish("good")))
        batcher.submit(Job(bad, lambda p: None, finish("bad")))
    assert done.wait(120)
    batcher.close()
    assert outcome["good"] is None and outcome["bad"] is not None
    assert good.stats.completion_tokens > 0


def test_body_size_cap(client):
    big = body(messages=[{"role": "user", "content": "x" * (2 << 20)}])
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "body larger" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while read
        yield b'{"model": "base:tiny-llama", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}]}'

    r = client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/v1/chat/completions", json=body()).status_code == 200  # the server is fine


def test_prompt_size_cap(gen):
    with TestClient(create_app(gen, MODEL, limits=ApiLimits(max_prompt_chars=1000))) as c:
        r = c.post("/v1/chat/completions", json=body(messages=[{"role": "user", "content": "z" * 1001}]))
        assert r.status_code == 400 and "characters" in r.json()["error"]["message"]


def test_max_tokens_capped_by_context(gen, client):
    ctx = gen.max_context
    r = client.post("/v1/chat/completions", json=body(max_tokens=ctx + 1))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    # No max_tokens and a prompt that leaves ~3 tokens: the default shrinks to fit instead of failing.
    lo, hi = 1, ctx
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if gen.count_tokens([{"role": "user", "content": "hello " * mid}]) <= ctx - 3:
            lo = mid
        else:
            hi = mid - 1
    msgs = [{"role": "user", "content": "hello " * lo}]
    room = ctx - gen.count_tokens(msgs)
    assert 0 < room < 10
    r = client.post("/v1/chat/completions", json={"model": "base:tiny-llama", "messages": msgs})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= room


@pytest.mark.parametrize("stop,fragment", [
    ([f"s{i}" for i in range(17)], "at most 16"),
    (["x" * 257], "256 characters"),
])
def test_stop_strings_bounded(client, stop, fragment):
    r = client.post("/v1/chat/completions", json=body(stop=stop))
    assert r.status_code == 400 and fragment in r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/health", "/v1/models"])
def test_every_route_behind_the_token(gen, path):
    with TestClient(create_app(gen, MODEL, token=TOKEN)) as c:
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer " + "t" * (MIN_TOKEN_CHARS - 1)}).status_code == 401
        assert c.get(path, headers=AUTH).status_code == 200


def test_minimum_token_length(gen, tmp_path, monkeypatch, capsys):
    with pytest.raises(GtExtError, match=f"at least {MIN_TOKEN_CHARS}"):
        create_app(gen, MODEL, token="short-token")
    from gt_ext.cli import main

    tok = tmp_path / "tok"
    tok.write_text("tok-123\n")
    assert main(["serve", "--model", "base:tiny-llama", "--token-file", str(tok)]) == 2
    err = capsys.readouterr().err
    assert f"at least {MIN_TOKEN_CHARS}" in err and "tok-123" not in err


def test_rate_flags(capsys):
    """`gt-ext serve` documents the rate flags in --help and refuses bad values in one line."""
    from gt_ext.cli import main

    assert main(["serve", "--model", "base:tiny-llama", "--rate-per-client", "-1"]) == 2
    assert "--rate-per-client -1" in capsys.readouterr().err
    main(["serve", "--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("--rate-per-client", "--burst-per-client", "--abandon-cost"))


def test_per_client_concurrency(gen):
    held = []

    async def sleep(s):
        held.append(s)

    app = create_app(gen, MODEL, limits=ApiLimits(max_per_client=2), sleep=sleep)
    with TestClient(app) as greedy, TestClient(app, client=("10.0.0.9", 4000)) as other:
        res = _held(gen, lambda i: greedy.post("/v1/chat/completions", json=body()), 4)
        codes = sorted(r.status_code for r in res)
        assert codes == [200, 200, 429, 429], [r.text for r in res]
        refused = [r for r in res if r.status_code == 429]
        assert all("in flight" in r.json()["error"]["message"] and r.headers["retry-after"] == "1" for r in refused)
        assert held == [1.0, 1.0]  # each refusal held refusal_delay_s first
        assert other.post("/v1/chat/completions", json=body()).status_code == 200


def test_rate_limit_per_client(gen):
    """A client over its request rate gets 429 with Retry-After (held a moment first); another
    client is unaffected; the first may send again once its bucket refilled."""
    now, held = [0.0], []

    async def sleep(s):
        held.append(s)

    limits = ApiLimits(rate_per_client=0.5, burst_per_client=3, refusal_delay_s=1.0)
    app = create_app(gen, MODEL, limits=limits, clock=lambda: now[0], sleep=sleep)
    with TestClient(app) as loud, TestClient(app, client=("10.0.0.9", 4000)) as other:
        assert [loud.get("/health").status_code for _ in range(2)] == [200, 200]  # every route counts
        assert loud.post("/v1/chat/completions", json=body()).status_code == 200
        r = loud.post("/v1/chat/completions", json=body())
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "2"  # one request's worth at 0.5 a second
        assert "too many requests" in r.json()["error"]["message"]
        assert held == [1.0]  # answered after min(its wait 2 s, refusal_delay_s)
        assert other.post("/v1/chat/completions", json=body()).status_code == 200
        now[0] += 2.0
        assert loud.post("/v1/chat/completions", json=body()).status_code == 200


def test_refusals_held_are_bounded(gen, monkeypatch):
    """A refused request is held before its 429, but at most `max_per_client` of one client and
    `MAX_HELD` in all: past that a refusal is answered at once (held connections stay bounded)."""
    from gt_ext.serve import api

    monkeypatch.setattr(api, "MAX_HELD", 2)
    release, held = threading.Event(), []

    async def sleep(s):
        held.append(s)
        await asyncio.to_thread(release.wait, 120)

    limits = ApiLimits(rate_per_client=1.0, burst_per_client=1, max_per_client=1)
    app = create_app(gen, MODEL, limits=limits, clock=lambda: 0.0, sleep=sleep)
    with TestClient(app) as a, TestClient(app, client=("10.0.0.8", 1)) as b, \
            TestClient(app, client=("10.0.0.9", 1)) as c:
        waiting: list = []
        for n, cl in enumerate((a, b), 1):
            assert cl.get("/health").status_code == 200  # its burst
            t = threading.Thread(target=lambda cl=cl: waiting.append(cl.get("/health")))
            t.start()
            assert _wait(lambda n=n: len(held) == n)  # refused and held
            r = cl.get("/health")  # refused again: its one place is taken, answered without a hold
            assert r.status_code == 429 and r.headers["retry-after"] == "1" and len(held) == n
        assert c.get("/health").status_code == 200
        assert c.get("/health").status_code == 429 and len(held) == 2  # MAX_HELD reached
        release.set()
        assert _wait(lambda: len(waiting) == 2)
        assert [(r.status_code, r.headers["retry-after"]) for r in waiting] == [(429, "1")] * 2


def test_default_rate_spares_honest_clients():
    """With the defaults, a client sending 3 requests a second (and a batch of 8 at once now and
    then) is never refused; one looping at 50 a second is held to the rate."""
    d, now = ApiLimits(), [0.0]
    rates = RateLimiter(d.rate_per_client, d.burst_per_client, clock=lambda: now[0])
    for i in range(600):  # 200 s
        now[0] = i / 3
        n = 8 if i % 30 == 0 else 1
        assert all(rates.take("honest") == 0.0 for _ in range(n)), i
    now[0], admitted = 1000.0, 0
    for i in range(50 * 60):  # 60 s at 50 a second
        now[0] = 1000.0 + i / 50
        admitted += rates.take("loop") == 0.0
    assert admitted <= d.burst_per_client + 60 * d.rate_per_client + 1


def test_rate_buckets_are_bounded():
    now = [0.0]
    rates = RateLimiter(1.0, 2, clock=lambda: now[0], max_clients=3)
    rates.take("busy")
    rates.take("busy")  # empty: kept while it refills
    for i in range(10):
        rates.take(f"10.0.0.{i}")
        now[0] += 0.1
    assert len(rates._buckets) <= 3
    assert "10.0.0.9" in rates._buckets


def test_fair_turns_between_clients(gen):
    """A client with many queued requests does not keep another's out of the next batch."""
    order: list[str] = []
    batcher = Batcher(gen, max_batch=2)
    left = threading.Semaphore(0)

    def job(name, client):
        req = gen.request(MSG, SamplingParams(max_new_tokens=1))
        return Job(req, lambda p: None, lambda e: (order.append(name), left.release()), client=client)

    with batcher._cv:
        for i in range(6):
            batcher.submit(job(f"a{i}", "a"))
        batcher.submit(job("b0", "b"))
        cancelled = job("a-gone", "a")
        cancelled.request.cancel.set()  # its client went away while it waited
        batcher.submit(cancelled)
    for _ in range(8):
        assert left.acquire(timeout=120)
    batcher.close()
    assert order.index("b0") < order.index("a3")  # second batch, not fourth
    assert order.index("a-gone") < order.index("a5")  # dropped from the queue at its turn, never run


# ----------------------------------------------------------------------------- a real server


@pytest.fixture()
def live(gen, monkeypatch, request):
    """uvicorn on 127.0.0.1 serving the app (with the `ApiLimits` given as the indirect parameter,
    if any); yields (url, the generator Requests it created, the app)."""
    import uvicorn

    made: list = []
    real_request = gen.request

    def spy(*a, **kw):
        r = real_request(*a, **kw)
        made.append(r)
        return r

    monkeypatch.setattr(gen, "request", spy)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(gen, MODEL, limits=getattr(request, "param", None))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", made, app
    finally:
        server.should_exit = True
        t.join(60)


def _wait(pred, timeout=120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


LONG = 1500  # tokens: ~tens of seconds on tiny-llama; a disconnect must end it long before


def _abandon(c: httpx.Client, url: str) -> None:
    """A stream asking for LONG tokens, hung up on after its first piece (the #20 finding)."""
    with c.stream("POST", f"{url}/v1/chat/completions", json=body(max_tokens=LONG, stream=True), timeout=60) as r:
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break


def test_abandoned_stream_stops_generating(live):
    url, made, _app = live
    with httpx.Client() as c:
        _abandon(c, url)
    assert _wait(lambda: made and made[-1].stats.finish_reason == "cancelled"), made[-1].stats
    assert made[-1].stats.completion_tokens < LONG


def test_abandoned_plain_request_stops_generating(live):
    url, made, _app = live
    payload = json.dumps(body(max_tokens=LONG)).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        assert _wait(lambda: made and made[-1].stats.completion_tokens > 0)
    assert _wait(lambda: made[-1].stats.finish_reason == "cancelled"), made[-1].stats
    assert made[-1].stats.completion_tokens < LONG


@pytest.mark.parametrize("live", [ApiLimits(rate_per_client=1e-6, burst_per_client=5, abandon_cost=10,
                                            refusal_delay_s=0)], indirect=True)
def test_abandoning_client_is_penalised(live):
    """A client that hangs up before its answer is whole is charged `abandon_cost` more, so one that
    abandons as a habit is refused; a client that reads its answers pays one request each."""
    url, made, app = live
    rates = app.state.rates
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as honest, \
            httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as quitter:
        with honest.stream("POST", f"{url}/v1/chat/completions", json=body(stream=True), timeout=60) as r:
            assert "[DONE]" in r.read().decode()
        assert honest.post(f"{url}/v1/chat/completions", json=body(), timeout=60).status_code == 200
        _abandon(quitter, url)
        assert _wait(lambda: rates.available("127.0.0.2") < 0)  # 5 - 1 - 10
        r = quitter.post(f"{url}/v1/chat/completions", json=body(), timeout=60)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 1, r.text
        assert round(rates.available("127.0.0.1")) == 3  # two requests read whole: no penalty
        assert honest.post(f"{url}/v1/chat/completions", json=body(), timeout=60).status_code == 200
