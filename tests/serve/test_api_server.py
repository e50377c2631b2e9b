"""`gt-ext serve` as a real process on 127.0.0.1: concurrent streams are batched and answered right."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration
GT_EXT = str(Path(sys.executable).parent / "gt-ext")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_over_http_with_token_and_concurrent_streams(tmp_path):
    port = _free_port()
    token_file = tmp_path / "token"
    token_file.write_text("tok-123-" + "x" * 32 + "\n")
    proc = subprocess.Popen([GT_EXT, "serve", "--model", "base:tiny-llama", "--port", str(port),
                             "--token-file", str(token_file), "--backend", "torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    hdr = {"Authorization": "Bearer tok-123-" + "x" * 32}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", headers=hdr, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)
        # Only loopback: the server is not reachable on another address of this host.
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in out and f"0.0.0.0:{port}" not in out

        assert httpx.get(f"{url}/v1/models", timeout=30).status_code == 401
        assert httpx.get(f"{url}/health", timeout=30).status_code == 401  # every route needs the token
        models = httpx.get(f"{url}/v1/models", headers=hdr, timeout=30).json()
        assert models["data"][0]["id"] == "base:tiny-llama"

        prompts = [f"Task number {i}: report status." for i in range(8)]

        def ask(p: str, stream: bool) -> str:
            body = {"model": "base:tiny-llama", "messages": [{"role": "user", "content": p}],
                    "max_tokens": 8, "temperature": 0, "stream": stream}
            if not stream:
                r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=hdr, timeout=300)
                assert r.status_code == 200, r.text
                return r.json()["choices"][0]["message"]["content"]
            text = ""
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=hdr, timeout=300) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        ch = json.loads(line[6:])
                        if ch.get("choices"):
                            text += ch["choices"][0]["delta"].get("content", "")
            return text

        sequential = [ask(p, False) for p in prompts]
        with cf.ThreadPoolExecutor(8) as ex:
            concurrent = list(ex.map(lambda p: ask(p, True), prompts))
        assert concurrent == sequential
    finally:
        proc.terminate()
        proc.wait(timeout=60)
