// Loads the pinned npm packages from the directory scripts/signin.sh installed them
// into (SIGNIN_PEERS, which has node_modules/): our glue lives in the repository, away
// from that node_modules, so bare imports would not find them.
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.env.SIGNIN_PEERS;
if (!dir) throw new Error("SIGNIN_PEERS is not set (run scripts/signin.sh)");
export const resolver = createRequire(path.join(dir, "package.json"));

/** The module `name` (a package or a package subpath) of the pinned install. */
export async function peer(name) {
  return import(pathToFileURL(resolver.resolve(name)).href);
}
