"""Run promptfoo's JavaScript pieces (`options.transform`, `javascript` assertions) with node.

promptfoo builds `new Function('output', 'context', body)` where `body` is the code itself when it
spans lines and `return <code>` when it is one line; a transform returns the new output and a
javascript assertion returns a boolean, a number (score) or a GradingResult object. This module
does the same in a real node process (one process per graded test, all its pieces in order), so
suites written for promptfoo grade here as they do there.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

log = logging.getLogger(__name__)

# Reads {"output", "context", "transform", "transform_context", "asserts": [...]} on stdin and
# prints {"output", "error", "asserts": [{"output", "result"|"error"}]}. `result` is what promptfoo's
# handler would return: {"pass", "score", "reason"}.
_NODE_SCRIPT = r"""
const fs = require('fs');
const path = require('path');
const job = JSON.parse(fs.readFileSync(0, 'utf-8'));
function build(code, argName) {
  code = String(code);
  return new Function(argName, 'context', code.includes('\n') ? code : 'return ' + code);
}
function loadFile(ref, base, defName) {
  let p = ref.slice('file://'.length), fn = defName;
  const i = p.lastIndexOf(':');
  if (i > 1) { fn = p.slice(i + 1); p = p.slice(0, i); }
  const mod = require(path.resolve(base || '.', p));
  if (fn && typeof mod[fn] === 'function') return mod[fn];
  if (typeof mod === 'function') return mod;
  if (mod.default && typeof mod.default === 'function') return mod.default;
  throw new Error('file ' + p + ' exports no function');
}
function isGrading(r) { return r && typeof r === 'object' && 'pass' in r; }
async function applyTransform(code, value, ctx, base) {
  const fn = code.startsWith('file://') ? loadFile(code, base) : build(code, 'output');
  const ret = await Promise.resolve(fn(value, ctx));
  if (ret === null || ret === undefined) throw new Error('Transform function did not return a value');
  return ret;
}
(async () => {
  const out = { asserts: [] };
  let output = job.output;
  try {
    if (job.transform) output = await applyTransform(job.transform, output, job.transform_context, job.base);
  } catch (e) {
    out.error = 'transform failed: ' + e.message;
    process.stdout.write(JSON.stringify(out));
    return;
  }
  out.output = output;
  for (const a of job.asserts) {
    const r = {};
    let value = output;
    try {
      if (a.transform) value = await applyTransform(a.transform, value, job.transform_context, job.base);
      r.output = value;
      if (a.code !== undefined && a.code !== null) {
        const code = String(a.code).trimEnd();
        const fn = code.startsWith('file://') ? loadFile(code, job.base) : build(code, 'output');
        let ret = await Promise.resolve(fn(value, Object.assign({}, job.context, a.config ? {config: a.config} : {})));
        if (typeof ret === 'boolean') {
          const pass = ret !== a.inverse;
          r.result = { pass, score: pass ? 1 : 0, reason: pass ? 'Assertion passed' : 'Custom function returned ' + (a.inverse ? 'true' : 'false') };
        } else if (typeof ret === 'number') {
          const pass = (a.threshold !== undefined && a.threshold !== null) ? ret >= a.threshold : ret > 0;
          r.result = { pass, score: ret, reason: pass ? 'Assertion passed' : 'Custom function returned ' + ret };
        } else if (isGrading(ret)) {
          r.result = { pass: !!ret.pass, score: typeof ret.score === 'number' ? ret.score : (ret.pass ? 1 : 0), reason: String(ret.reason || '') };
        } else {
          throw new Error('Custom function must return a boolean, number, or GradingResult object. Got type ' + typeof ret);
        }
      }
    } catch (e) {
      r.result = { pass: false, score: 0, reason: 'Custom function threw error: ' + e.message };
    }
    out.asserts.push(r);
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


def node_binary() -> str | None:
    """Path of `node` on PATH (promptfoo's JavaScript runs there), or None."""
    return shutil.which("node")


def run_js(job: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Run one test's transform and JavaScript assertions in node; return the script's JSON answer.

    Raises RuntimeError when node is missing, times out or prints something that is not JSON.
    """
    node = node_binary()
    if node is None:
        raise RuntimeError("node is not on PATH")
    try:
        proc = subprocess.run(
            [node, "-e", _NODE_SCRIPT],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"node timed out after {timeout:.0f} s") from e
    if proc.returncode != 0:
        raise RuntimeError(f"node failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"node printed no JSON: {proc.stdout[:200]!r}") from e
