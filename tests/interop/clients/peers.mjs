// Loads the pinned npm packages from the directory scripts/interop-clients.sh installed
// them into (CLIENTS_PEERS, which has node_modules/): our glue lives in the repository,
// away from that node_modules, so bare imports would not find them.
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.env.CLIENTS_PEERS;
if (!dir) throw new Error("CLIENTS_PEERS is not set (run scripts/interop-clients.sh)");
export const resolver = createRequire(path.join(dir, "package.json"));

/** The module `name` (a package or a package subpath) of the pinned install. */
export async function peer(name) {
  return import(pathToFileURL(resolver.resolve(name)).href);
}
