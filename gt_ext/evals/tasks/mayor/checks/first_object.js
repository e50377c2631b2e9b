// options.transform: the first balanced {...} JSON object of a model answer (strings and escapes
// respected), or the whole answer when there is none, so is-json then fails on it.
module.exports = (output) => {
  const s = String(output);
  const i = s.indexOf('{');
  if (i < 0) return s;
  let depth = 0, inStr = false, esc = false;
  for (let j = i; j < s.length; j++) {
    const c = s[j];
    if (inStr) { if (esc) esc = false; else if (c === '\\') esc = true; else if (c === '"') inStr = false; continue; }
    if (c === '"') inStr = true;
    else if (c === '{') depth++;
    else if (c === '}' && --depth === 0) return s.slice(i, j + 1);
  }
  return s.slice(i);
};
