// Preloaded (`node --require`) into the reference MCP server that
// scripts/conformance-server.sh starts: that server calls `listen(PORT)`, which binds
// every interface; this makes a listen call that names a port but no host bind
// 127.0.0.1 instead, so the test server is reachable from this machine only.
"use strict";
const net = require("node:net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  const portOnly =
    (typeof port === "number" || (typeof port === "string" && /^\d+$/.test(port))) &&
    typeof args[1] !== "string";
  if (portOnly) {
    args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
