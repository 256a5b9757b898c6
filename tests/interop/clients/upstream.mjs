// The MCP server behind Latchkey in the client interop run: the TypeScript MCP SDK's
// own Server and StreamableHTTPServerTransport (stateful sessions, as the SDK's
// examples run them), unmodified, on plain node:http, with no authorization (Latchkey
// adds it with "auth_type": "none"). One tool, `echo`, which answers its `text`.
//
// Usage: node upstream.mjs
// Prints one JSON line {"url": "http://127.0.0.1:N/mcp"} once it listens.
// GET /_test/log answers the JSON-RPC methods it received.
import http from "node:http";
import { randomUUID } from "node:crypto";
import { peer } from "./peers.mjs";

const { Server } = await peer("@modelcontextprotocol/sdk/server/index.js");
const { StreamableHTTPServerTransport } = await peer("@modelcontextprotocol/sdk/server/streamableHttp.js");
const { ListToolsRequestSchema, CallToolRequestSchema, isInitializeRequest } = await peer("@modelcontextprotocol/sdk/types.js");

function mcpServer() {
  const server = new Server({ name: "interop-echo", version: "1.0.0" }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: [
      {
        name: "echo",
        description: "Echoes its text",
        inputSchema: { type: "object", properties: { text: { type: "string" } }, required: ["text"] },
      },
    ],
  }));
  server.setRequestHandler(CallToolRequestSchema, async (req) => {
    if (req.params.name !== "echo") throw new Error(`no tool ${req.params.name}`);
    return { content: [{ type: "text", text: String(req.params.arguments?.text ?? "") }] };
  });
  return server;
}

const seen = [];
const transports = new Map();
const reply = (res, status, body) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
};

const httpServer = http.createServer(async (req, res) => {
  try {
    if (req.url === "/_test/log") return reply(res, 200, seen);
    if (req.url !== "/mcp") return reply(res, 404, { error: "not found" });
    let body;
    if (req.method === "POST") {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      body = JSON.parse(Buffer.concat(chunks).toString("utf8") || "null");
    }
    const sid = req.headers["mcp-session-id"];
    seen.push({ http: req.method, rpc: body?.method ?? null, session: sid ? String(sid).slice(0, 8) : null });
    let transport = sid ? transports.get(String(sid)) : undefined;
    if (!transport) {
      if (sid) return reply(res, 404, { jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null });
      if (req.method !== "POST" || !isInitializeRequest(body)) {
        return reply(res, 400, { jsonrpc: "2.0", error: { code: -32000, message: "No session: initialize first" }, id: null });
      }
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => transports.set(id, transport),
      });
      transport.onclose = () => transports.delete(transport.sessionId);
      await mcpServer().connect(transport);
    }
    await transport.handleRequest(req, res, body);
  } catch (e) {
    if (!res.headersSent) reply(res, 500, { error: String(e?.message ?? e) });
  }
});
httpServer.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ url: `http://127.0.0.1:${httpServer.address().port}/mcp` })}\n`);
});
process.on("SIGTERM", () => {
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections?.();
});
