"""Prompt API under abuse: an honest client's latency on an idle server and next to abusive clients.

    .venv/bin/python bench/api_abuse.py [--model base:tiny-llama] [--requests 8] [--rounds 3] [--tokens 16]
                                        [--abusers abandoner,flooder,...] [--json]

Starts the real server (`gt-ext serve`, 127.0.0.1, PyTorch backend, one thread), then:

`--rounds` times (so both phases see the same background load of a shared machine):
1. idle: the honest client (source 127.0.0.1) sends `--requests` sequential chat requests of
   `--tokens` tokens; each latency is measured;
2. abuse: the same honest requests while abusive clients, each from its own loopback address,
   replay the findings of issue #20 in loops:
   - abandoner (127.0.0.2): streams asking for 1500 tokens, hangs up after the first piece;
   - giant (127.0.0.4): 40 MB request bodies;
   - poisoner (127.0.0.5): `max_tokens: 1e9`, `seed: 1e23`;
   - stopper (127.0.0.6): the finding's 100 stop strings x 4000 characters, then the most the
     limits allow (16 x 256) over honest-sized requests;
   - slowloris (127.0.0.7): a body trickled one byte a second;
   and, with `--abusers` naming it, a flooder (127.0.0.3): 16 concurrent honest-sized requests at
   a time, of which the per-client limits admit 8 in flight and 10 a second.

No abuser honours Retry-After: the server's own defences (per-client rate with the abandon
penalty, refusals held before their 429; docs/serve.md) are what is measured.

Prints the honest client's median and p90 latency in both phases, their ratio (the goal: under
2x), and what the abusers got back (status codes). Absolute times move with the machine's load;
the ratio from one run is the result.

A client that keeps requests of the full context length in flight is not in the mix: it is load,
not abuse. (With continuous batching an honest request joins the running batch at the next step,
on a spare row if the batch is full: docs/serve.md.)
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

GT_EXT = Path(sys.executable).parent / "gt-ext"
SERVE = [str(GT_EXT)] if GT_EXT.exists() else [sys.executable, "-m", "gt_ext.cli"]
PROMPT = [{"role": "user", "content": "Report the patrol status of the rig in one line."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(addr: str, token: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=addr), timeout=600,
                        headers={"Authorization": f"Bearer {token}"})


def honest(url: str, token: str, model: str, n: int, tokens: int) -> list[float]:
    """Latencies of `n` sequential requests; each must come back whole (not cut, not cancelled)."""
    out = []
    with _client("127.0.0.1", token) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post(f"{url}/v1/chat/completions", json={"model": model, "messages": PROMPT,
                                                             "max_tokens": tokens, "temperature": 0})
            r.raise_for_status()
            out.append(time.perf_counter() - t0)
            got = r.json()
            if got["choices"][0]["finish_reason"] not in ("stop", "length"):
                raise SystemExit(f"an honest answer came back {got['choices'][0]['finish_reason']}")
            HONEST_ANSWERS[(got["choices"][0]["message"]["content"], got["usage"]["completion_tokens"])] += 1
    return out


HONEST_ANSWERS: collections.Counter = collections.Counter()


class Abusers:
    """The abusive clients, each a loop on its own thread until `stop()`."""

    def __init__(self, url: str, token: str, model: str, tokens: int):
        self.url, self.token, self.model, self.tokens = url, token, model, tokens
        self.codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, which: list[str]) -> None:
        self._stop.clear()
        plan = [("abandoner", "127.0.0.2", self.abandoner, 2), ("flooder", "127.0.0.3", self.flooder, 16),
                ("giant", "127.0.0.4", self.giant, 1), ("poisoner", "127.0.0.5", self.poisoner, 2),
                ("stopper", "127.0.0.6", self.stopper, 1), ("slowloris", "127.0.0.7", self.slowloris, 2)]
        for name, addr, fn, copies in plan:
            if name not in which:
                continue
            for _ in range(copies):
                t = threading.Thread(target=self._loop, args=(name, addr, fn), daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(120)
        self._threads = []

    def _loop(self, name: str, addr: str, fn) -> None:
        with _client(addr, self.token) as c:
            while not self._stop.is_set():
                try:
                    self.codes[name][fn(c, addr)] += 1
                except httpx.HTTPError as e:
                    self.codes[name][e.__class__.__name__] += 1
                # Pace the requests that cost the server (almost) nothing: unpaced, their client
                # threads would only measure this 2-core machine's CPU, shared with the server.
                if name in ("giant", "poisoner"):
                    time.sleep(0.2)

    def _chat(self, c: httpx.Client, **body) -> int:
        body = {"model": self.model, "messages": PROMPT, **body}
        return c.post(f"{self.url}/v1/chat/completions", json=body).status_code

    def abandoner(self, c: httpx.Client, _addr: str) -> int:
        body = {"model": self.model, "messages": PROMPT, "max_tokens": 1500, "stream": True}
        with c.stream("POST", f"{self.url}/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break
            return r.status_code

    def flooder(self, c: httpx.Client, _addr: str) -> int:
        code = self._chat(c, max_tokens=self.tokens)
        if code == 429:
            time.sleep(0.05)
        return code

    _giant_body = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"g" * (40 << 20) + b'"}]}'

    def giant(self, c: httpx.Client, _addr: str) -> int:
        r = c.post(f"{self.url}/v1/chat/completions", content=self._giant_body,
                   headers={"content-type": "application/json"})
        return r.status_code

    def poisoner(self, c: httpx.Client, _addr: str) -> int:
        a = self._chat(c, max_tokens=1e9)
        b = self._chat(c, seed=1e23, max_tokens=self.tokens)
        return a if a != 400 else b

    def stopper(self, c: httpx.Client, _addr: str) -> int:
        finding = self._chat(c, max_tokens=800, stop=[("ab" * 2000)[i:i + 3999] + "Q" for i in range(100)])
        self.codes["stopper (100 x 4000)"][finding] += 1
        return self._chat(c, max_tokens=self.tokens, stop=[("ab" * 128)[i:i + 255] + "Q" for i in range(16)])

    def slowloris(self, _c: httpx.Client, addr: str) -> int:
        host, port = self.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), source_address=(addr, 0)) as s:
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.token}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode())
            s.settimeout(1.0)
            while not self._stop.is_set():
                try:
                    s.sendall(b"x")
                    data = s.recv(200)
                except TimeoutError:
                    continue
                except OSError:
                    return -1
                if data:
                    return int(data.split()[1])
            return 0


def _abuse_process(url: str, token: str, model: str, tokens: int, which: list[str], stop: mp.Event,
                   out: mp.Queue) -> None:
    """The abusers in a process of their own (their threads do not share the honest client's GIL)."""
    ab = Abusers(url, token, model, tokens)
    ab.start(which)
    stop.wait()
    ab.stop()
    out.put({k: dict(v) for k, v in ab.codes.items()})


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="base:tiny-llama")
    ap.add_argument("--requests", type=int, default=8, help="honest requests per phase")
    ap.add_argument("--rounds", type=int, default=3, help="idle/abuse phase pairs")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--abusers", default="abandoner,giant,poisoner,stopper,slowloris",
                    help="comma-separated: abandoner, flooder, giant, poisoner, stopper, slowloris")
    ap.add_argument("--quantize", default=None, choices=["int8", "none"], help="server --quantize")
    ap.add_argument("--server-cpus", default=None, help="pin the server to these CPUs (taskset list, e.g. 0,1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    port, token = _free_port(), secrets.token_urlsafe(32)
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, GT_EXT_API_TOKEN=token)
    pin = ["taskset", "-c", args.server_cpus] if args.server_cpus else []
    quant = ["--quantize", args.quantize] if args.quantize else []
    server = subprocess.Popen([*pin, *SERVE, "serve", "--model", args.model, "--port", str(port), "--backend", "torch",
                               "--threads", "1", *quant], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"}, timeout=5).is_success:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        honest(url, token, args.model, 2, args.tokens)  # warm up
        codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        idle: list[float] = []
        busy: list[float] = []
        for _ in range(args.rounds):
            idle += honest(url, token, args.model, args.requests, args.tokens)
            stop, out = mp.Event(), mp.Queue()
            proc = mp.Process(target=_abuse_process, args=(url, token, args.model, args.tokens,
                                                           args.abusers.split(","), stop, out))
            proc.start()
            time.sleep(3.0)  # let the abuse reach its steady state
            try:
                busy += honest(url, token, args.model, args.requests, args.tokens)
            finally:
                stop.set()
                for name, got in out.get(timeout=300).items():
                    codes[name].update(got)
                proc.join(60)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    res = {
        "model": args.model, "requests": args.requests * args.rounds, "tokens": args.tokens,
        "abuser_set": args.abusers.split(","),
        "idle_median_s": statistics.median(idle), "idle_p90_s": _pct(idle, 0.9),
        "abuse_median_s": statistics.median(busy), "abuse_p90_s": _pct(busy, 0.9),
        "abusers": {k: dict(v) for k, v in codes.items()},
    }
    res["ratio_median"] = res["abuse_median_s"] / res["idle_median_s"]
    res["ratio_p90"] = res["abuse_p90_s"] / res["idle_p90_s"]
    # Shown, since answers of other lengths take other times. The decoder's int8 scales are per
    # row, but attention over batch-mates of other lengths can differ in the last bits, which int8
    # rounding can turn into another greedy token: under abuse the honest text may vary.
    res["honest_answers"] = {f"{n_tok} tokens: {text[:40]!r}": k for (text, n_tok), k in HONEST_ANSWERS.items()}
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"honest client, {res['requests']} requests of {args.tokens} tokens on {args.model}; abusers: "
          f"{args.abusers}")
    print(f"  idle server : median {res['idle_median_s']:.3f} s  p90 {res['idle_p90_s']:.3f} s")
    print(f"  under abuse : median {res['abuse_median_s']:.3f} s  p90 {res['abuse_p90_s']:.3f} s")
    for answer, k in res["honest_answers"].items():
        print(f"  answer x{k:<3}: {answer}")
    print(f"  ratio       : median {res['ratio_median']:.2f}x  p90 {res['ratio_p90']:.2f}x  (goal < 2x)")
    for name, codes in res["abusers"].items():
        print(f"  {name:10} got {codes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
