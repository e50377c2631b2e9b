// gt-ext-hook: corpus spool (pi session_shutdown)
//
// A pi extension (https://github.com/badlogic/pi-mono, docs/extensions.md) that `gt-ext hooks
// install` copies to `<pi agent dir>/extensions/gt-ext-corpus.ts` ($PI_CODING_AGENT_DIR, else
// ~/.pi/agent), where pi discovers it for every session. On `session_shutdown` (quit, /new,
// /resume, /fork, /reload) it runs the town's corpus hook with the session file as its only
// argument: `<town>/.corpus/hooks/session_shutdown <session.jsonl>`. The town is the one gt
// launched the agent in (GT_TOWN_ROOT or GT_ROOT); outside a town, or in a town without the
// corpus hooks, it does nothing. The hook only spools (milliseconds); errors never reach pi.
//
// Written without type annotations or imports of pi's packages, so it loads as TypeScript in pi
// and as plain JavaScript anywhere else.
import { existsSync } from "node:fs";
import { join } from "node:path";

export default function (pi) {
  pi.on("session_shutdown", async (_event, ctx) => {
    const town = process.env.GT_TOWN_ROOT || process.env.GT_ROOT;
    if (!town) return;
    const hook = join(town, ".corpus", "hooks", "session_shutdown");
    let file;
    try {
      file = ctx && ctx.sessionManager && ctx.sessionManager.getSessionFile();
    } catch (_e) {
      return;
    }
    if (!file || !existsSync(hook)) return; // an ephemeral session (--no-session) has no file
    try {
      const res = await pi.exec(hook, [file]);
      if (res && res.code !== 0) console.error("[gt-ext] corpus hook exited " + res.code + ": " + (res.stderr || ""));
    } catch (e) {
      console.error("[gt-ext] corpus hook failed: " + (e && e.message ? e.message : e));
    }
  });
}
