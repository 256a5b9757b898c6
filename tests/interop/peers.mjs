// Loads the pinned third-party packages from the install directory scripts/interop.sh
// made (INTEROP_PEERS: a directory with node_modules/). The glue files live in the
// repository, away from that node_modules, so bare imports would not find them.
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.env.INTEROP_PEERS;
if (!dir) throw new Error("INTEROP_PEERS is not set (run scripts/interop.sh)");
const resolver = createRequire(path.join(dir, "package.json"));

/** The module `name` (a package or a package subpath) of the pinned install. */
export async function peer(name) {
  return import(pathToFileURL(resolver.resolve(name)).href);
}
