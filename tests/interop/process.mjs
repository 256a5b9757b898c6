// Background processes for the interop drivers (tests/interop/matrix.test.mjs and
// tests/interop/clients/driver.mjs): started with their output appended to a log,
// ready when a line matches, all killed when the driver exits.

import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import path from "node:path";

/** Every process started and not yet exited. */
export const children = new Set();

/** Kills every process still running. */
export function killAll() {
  for (const c of children) c.kill("SIGKILL");
}

process.on("exit", killAll);

/**
 * Starts `cmd args`, its stdout and stderr appended to `dir/log`; resolves with
 * `{child, match}` at the first match of `ready` (a regexp), or fails after 30 s (the
 * process is killed, else it keeps the driver alive) or when it exits first.
 */
export function start(name, cmd, args, { dir, log, ready, env = {} }) {
  const file = createWriteStream(path.join(dir, log), { flags: "a" });
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  return new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${name} was not ready within 30 s`));
    }, 30000);
    const onData = (d) => {
      file.write(d);
      if (buf === null) return;
      buf += d.toString();
      const m = buf.match(ready);
      if (m) {
        buf = null;
        clearTimeout(timer);
        resolve({ child, match: m });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (buf !== null) reject(new Error(`${name} exited (${code}) before it was ready; see ${log}`));
    });
  });
}
