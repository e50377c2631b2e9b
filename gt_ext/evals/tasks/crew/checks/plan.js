// Check a bead plan {"beads": [{"id", "title", "type", "parent", "needs": [ids], "rig"}]}:
// unique ids, known needs and parents, no dependency cycle, and the task's hidden rules:
//   vars.min_beads  at least this many beads
//   vars.min_ratio  beads / longest `needs` chain (how much can run at once)
//   vars.order      "a>b,...": every bead whose title matches /b/i needs (transitively) one matching /a/i
//   vars.rig_of     "re=rig,...": every bead whose title matches /re/i is filed in that rig
//   vars.epic       true: exactly one bead of type epic, and every other bead has it as parent
module.exports = (output, context) => {
  const v = context.vars;
  const fail = (reason) => ({ pass: false, score: 0, reason });
  let plan;
  try { plan = typeof output === 'string' ? JSON.parse(output) : output; } catch (e) { return fail('plan is not JSON'); }
  const beads = Array.isArray(plan) ? plan : (plan && plan.beads);
  if (!Array.isArray(beads) || beads.length === 0) return fail('no beads list');
  const byId = new Map();
  for (const b of beads) {
    if (!b || b.id === undefined || b.id === null || byId.has(String(b.id))) return fail('missing or duplicate id');
    byId.set(String(b.id), b);
  }
  const needs = (b) => (Array.isArray(b.needs) ? b.needs : []).map(String);
  for (const b of beads) {
    for (const n of needs(b)) if (!byId.has(n)) return fail('unknown need ' + n);
    if (b.parent !== undefined && b.parent !== null && b.parent !== '' && !byId.has(String(b.parent))) return fail('unknown parent ' + b.parent);
  }
  const depth = new Map(), state = new Map();
  const visit = (id) => {
    if (state.get(id) === 1) throw new Error('dependency cycle at ' + id);
    if (state.get(id) === 2) return depth.get(id);
    state.set(id, 1);
    let d = 1;
    for (const n of needs(byId.get(id))) d = Math.max(d, visit(n) + 1);
    state.set(id, 2); depth.set(id, d);
    return d;
  };
  let longest = 0;
  try { for (const id of byId.keys()) longest = Math.max(longest, visit(id)); } catch (e) { return fail(e.message); }
  const reasons = [];
  const work = beads.filter((b) => String(b.type || '').toLowerCase() !== 'epic');
  if (work.length < Number(v.min_beads || 1)) reasons.push(`only ${work.length} work beads`);
  if (v.min_ratio && work.length / longest < Number(v.min_ratio)) reasons.push(`parallelism ${(work.length / longest).toFixed(2)} < ${v.min_ratio}`);
  const ancestors = (id, acc = new Set()) => { for (const n of needs(byId.get(id))) if (!acc.has(n)) { acc.add(n); ancestors(n, acc); } return acc; };
  const titled = (re) => beads.filter((x) => re.test(String(x.title || '')));
  for (const rule of String(v.order || '').split(',').filter(Boolean)) {
    const [a, b] = rule.split('>').map((s) => new RegExp(s.trim(), 'i'));
    const as = titled(a).map((x) => String(x.id)), bs = titled(b).map((x) => String(x.id));
    if (!as.length || !bs.length) { reasons.push('no bead for ' + rule); continue; }
    if (!bs.every((id) => as.some((x) => x !== id && ancestors(id).has(x)))) reasons.push('order ' + rule + ' not respected');
  }
  for (const rule of String(v.rig_of || '').split(',').filter(Boolean)) {
    const [re, rig] = rule.split('=').map((s) => s.trim());
    const hit = titled(new RegExp(re, 'i'));
    if (!hit.length) { reasons.push('no bead for ' + re); continue; }
    for (const b of hit) if (String(b.rig || '').toLowerCase() !== rig) reasons.push(`"${b.title}" filed in ${b.rig}, not ${rig}`);
  }
  if (v.epic) {
    const epics = beads.filter((b) => String(b.type || '').toLowerCase() === 'epic');
    if (epics.length !== 1) reasons.push(`${epics.length} epics, want 1`);
    else for (const b of work) if (String(b.parent) !== String(epics[0].id)) reasons.push(`"${b.title}" is not a child of the epic`);
  }
  return { pass: reasons.length === 0, score: reasons.length === 0 ? 1 : 0, reason: reasons.join('; ') || 'plan ok' };
};
