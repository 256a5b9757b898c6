// Preloaded (node --import) into a third-party program the interop matrix runs
// unmodified, whose servers call listen(port) with no host and so would bind every
// interface: a listen on a TCP port with no host binds 127.0.0.1 instead. Nothing else
// changes. Used for the TypeScript MCP SDK's example server (simpleStreamableHttp).
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    if (args.length === 1 || typeof args[1] === "function") args.splice(1, 0, "127.0.0.1");
  } else if (args[0] && typeof args[0] === "object" && args[0].port !== undefined && !args[0].host && !args[0].path) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
