"""llama.cpp's own server as a serving baseline: build it once from the vendored llama.cpp source of
the pinned llama-cpp-python sdist (the source install.sh already compiles the Python binding from),
run it on 127.0.0.1 with parallel slots and continuous batching, and time requests against it.

Used by bench/serve.py (`llama-server --parallel N`, the anchor for the aggregate figure). The build
is a benchmark-only artifact under ~/.cache/gt-ext (never committed): the same CMake flags as the
binding (`GGML_NATIVE=OFF`), a static Release build of the `llama-server` target only (~100 compile
steps, some minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("GT_EXT_CACHE", Path.home() / ".cache" / "gt-ext"))


def _pin() -> tuple[str, str, str]:
    """(version, sdist URL, sha256) of llama-cpp-python as pinned in install.sh (one source of truth)."""
    text = (REPO / "install.sh").read_text()
    got = {k: re.search(rf'^{k}="?([^"\n]+)"?', text, re.M) for k in
           ("LLAMA_CPP_VERSION", "LLAMA_CPP_SDIST_URL", "LLAMA_CPP_SDIST_SHA256")}
    missing = [k for k, m in got.items() if m is None]
    if missing:
        raise RuntimeError(f"install.sh: no {', '.join(missing)} line")
    version = got["LLAMA_CPP_VERSION"].group(1)
    return version, got["LLAMA_CPP_SDIST_URL"].group(1).replace("$LLAMA_CPP_VERSION", version), \
        got["LLAMA_CPP_SDIST_SHA256"].group(1)


def binary_path() -> Path:
    """Where the built llama-server lives (it may not exist yet)."""
    return CACHE / f"llama-server-{_pin()[0]}" / "llama-server"


def _source_dir(version: str, url: str, sha: str) -> Path:
    """vendor/llama.cpp of the pinned sdist, unpacked once into the cache (sha256 checked)."""
    src = CACHE / f"llama.cpp-src-{version}"
    if (src / "CMakeLists.txt").is_file():
        return src
    sdist = CACHE / "sdists" / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", url)
        tmp = sdist.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        os.replace(tmp, sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != sha:
        raise RuntimeError(f"{sdist}: sha256 {digest} is not the pinned {sha}")
    out = Path(tempfile.mkdtemp(prefix=".llama-src.", dir=CACHE))
    with tarfile.open(sdist) as t:
        for m in t.getmembers():
            parts = m.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and parts[1] and (m.isfile() or m.isdir()):
                m.name = parts[1]
                t.extract(m, out, filter="data")
    os.replace(out, src)
    return src


def build() -> Path:
    """Build llama-server from the pinned vendored source if it is not built yet; return its path."""
    exe = binary_path()
    if exe.is_file():
        return exe
    version, url, sha = _pin()
    src = _source_dir(version, url, sha)
    bdir = CACHE / f"llama-server-{version}.build"
    if not (bdir / "build.ninja").is_file():
        subprocess.run(["cmake", "-S", str(src), "-B", str(bdir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                        "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
                        "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"],
                       check=True, stdout=subprocess.DEVNULL)
    print(f"building llama-server {version} in {bdir} (once; some minutes)", flush=True)
    subprocess.run(["ninja", "-C", str(bdir), "llama-server"], check=True, stdout=subprocess.DEVNULL)
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".part")
    shutil.copy2(bdir / "bin" / "llama-server", tmp)
    os.replace(tmp, exe)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(gguf: Path, parallel: int, threads: int, ctx_per_slot: int = 1024,
          lora: Path | None = None) -> Iterator[int]:
    """Run `llama-server --parallel N` (continuous batching on, its default) on 127.0.0.1; yield the
    port. With `lora`, the GGUF LoRA is loaded without being applied; requests apply it themselves
    (`"lora": [{"id": 0, "scale": 1.0}]`), as per-request adapters."""
    port = _free_port()
    cmd = [str(build()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
           "-c", str(ctx_per_slot * parallel), "--threads", str(threads), "--threads-batch", str(threads),
           "--cont-batching", "--no-webui"]
    if lora is not None:
        cmd += ["--lora", str(lora), "--lora-init-without-apply"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited {proc.returncode}: {proc.stderr.read()[-800:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not become healthy in 120 s")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _body(ids: list[int], n: int, lora: bool, stream: bool) -> bytes:
    req = {"prompt": ids, "n_predict": n, "ignore_eos": True, "temperature": 0.0, "top_k": 1, "stream": stream}
    if lora:
        req["lora"] = [{"id": 0, "scale": 1.0}]
    return json.dumps(req).encode()


def single(port: int, ids: list[int], n: int, lora: bool = False) -> dict:
    """One streamed request: TTFT (s), decode tokens/s after the first token, tokens."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/completion", body=_body(ids, n, lora, stream=True), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"llama-server: HTTP {r.status}: {r.read()[:300]!r}")
    first, toks = None, 0
    for raw in r:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        d = json.loads(line[6:])
        if d.get("stop"):  # the last chunk carries the count (a chunk may hold no text: split UTF-8)
            toks = int(d.get("tokens_predicted", toks))
            break
        toks += 1
        if first is None:
            first = time.perf_counter()
    total = time.perf_counter() - t0
    ttft = (first or t0) - t0
    decode = (toks - 1) / (total - ttft) if toks > 1 and total > ttft else 0.0
    return {"ttft_s": round(ttft, 3), "decode_tok_s": round(decode, 2), "tokens": toks, "total_s": round(total, 2)}


def aggregate(port: int, prompts: list[list[int]], n: int, lora: bool = False) -> dict:
    """All prompts at once, one connection each: generated tokens / wall time."""
    done: list[int] = []
    errors: list[str] = []

    def one(ids: list[int]) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request("POST", "/completion", body=_body(ids, n, lora, stream=False),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            errors.append(f"HTTP {r.status}: {body[:200]!r}")
            return
        done.append(int(json.loads(body)["tokens_predicted"]))

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"llama-server: {errors[0]}")
    toks = sum(done)
    return {"agg_tokens": toks, "agg_wall_s": round(wall, 2), "aggregate_tok_s": round(toks / wall, 2)}
