// Planning check for a bead plan {"beads": [{"id", "title", "needs": [ids]}]}:
// unique ids, known needs, no cycle, at least vars.min_beads beads, parallelism ratio
// (beads / longest dependency chain) >= vars.min_ratio, and each vars.order "a>b" (regexes on
// titles) means some bead matching a is (transitively) needed by every bead matching b.
module.exports = (output, context) => {
  const v = context.vars;
  let plan;
  try { plan = typeof output === 'string' ? JSON.parse(output) : output; } catch (e) {
    return { pass: false, score: 0, reason: 'plan is not JSON' };
  }
  const beads = Array.isArray(plan) ? plan : (plan && plan.beads);
  if (!Array.isArray(beads) || beads.length === 0) return { pass: false, score: 0, reason: 'no beads list' };
  const byId = new Map();
  for (const b of beads) {
    if (!b || b.id === undefined || byId.has(String(b.id))) return { pass: false, score: 0, reason: 'missing or duplicate id' };
    byId.set(String(b.id), b);
  }
  const needs = (b) => (Array.isArray(b.needs) ? b.needs : []).map(String);
  for (const b of beads) for (const n of needs(b)) if (!byId.has(n)) return { pass: false, score: 0, reason: 'unknown need ' + n };
  const depth = new Map(), state = new Map();
  const visit = (id) => {
    if (state.get(id) === 1) throw new Error('cycle at ' + id);
    if (state.get(id) === 2) return depth.get(id);
    state.set(id, 1);
    let d = 1;
    for (const n of needs(byId.get(id))) d = Math.max(d, visit(n) + 1);
    state.set(id, 2); depth.set(id, d);
    return d;
  };
  let longest = 0;
  try { for (const id of byId.keys()) longest = Math.max(longest, visit(id)); } catch (e) {
    return { pass: false, score: 0, reason: e.message };
  }
  const reasons = [];
  if (beads.length < Number(v.min_beads || 1)) reasons.push(`only ${beads.length} beads`);
  const ratio = beads.length / longest;
  if (ratio < Number(v.min_ratio || 1)) reasons.push(`parallelism ${ratio.toFixed(2)} < ${v.min_ratio}`);
  const ancestors = (id, acc = new Set()) => { for (const n of needs(byId.get(id))) if (!acc.has(n)) { acc.add(n); ancestors(n, acc); } return acc; };
  for (const rule of String(v.order || '').split(',').filter(Boolean)) {
    const [a, b] = rule.split('>').map((s) => new RegExp(s.trim(), 'i'));
    const as = beads.filter((x) => a.test(String(x.title || ''))).map((x) => String(x.id));
    const bs = beads.filter((x) => b.test(String(x.title || ''))).map((x) => String(x.id));
    if (!as.length || !bs.length) { reasons.push('missing bead for ' + rule); continue; }
    if (!bs.every((id) => as.some((x) => ancestors(id).has(x)))) reasons.push('order ' + rule + ' not respected');
  }
  return { pass: reasons.length === 0, score: reasons.length === 0 ? 1 : 0, reason: reasons.join('; ') || 'plan ok' };
};
