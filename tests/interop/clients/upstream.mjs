// The MCP server behind Latchkey in the client interop run: the TypeScript MCP SDK's
// own Server and StreamableHTTPServerTransport (stateful sessions, as the SDK's
// examples run them), unmodified, on plain node:http, with no authorization (Latchkey
// adds it with "auth_type": "none"). Its tools: `echo` answers its `text`; the others
// use the SDK server's own means during their call, on the call's own SSE answer
// (`server.elicitInput`, `createMessage`, `listRoots` with the call's id as
// `relatedRequestId`; the handler's `extra.sendNotification`), to exercise relays from
// an upstream to the client that caused them:
// `confirm` sends `elicitation/create` (form mode) and answers with what the user
// accepted; `summarise` sends `sampling/createMessage` and answers the model's text;
// `roots` sends `roots/list` and answers the roots' URIs; `slow` sends two
// `notifications/progress` for the call's progressToken, then answers. The Server is
// made with `enforceStrictCapabilities`, so it refuses (throws, before sending) a
// request its client did not declare the capability for, as the spec asks of servers
// (and `elicitInput` wants `elicitation.form` declared, not only `elicitation`); such a
// failure, or an error answer, becomes the tool's `isError` result, its text starting
// with the tool's name.
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

const textInput = { type: "object", properties: { text: { type: "string" } }, required: ["text"] };
const TOOLS = [
  { name: "echo", description: "Echoes its text", inputSchema: textInput },
  { name: "confirm", description: "Asks the user to confirm its text (elicitation/create) and answers what they accepted", inputSchema: textInput },
  { name: "summarise", description: "Asks the client's model to summarise its text (sampling/createMessage) and answers the model's text", inputSchema: textInput },
  { name: "roots", description: "Asks the client for its roots (roots/list) and answers their URIs", inputSchema: textInput },
  { name: "slow", description: "Sends two progress notifications for the call's progressToken, then answers", inputSchema: textInput },
];
// How long the upstream waits for the client's answer to one of its requests.
const RELAY_TIMEOUT_MS = 15000;
const text = (t) => ({ content: [{ type: "text", text: t }] });

/**
 * The tools other than `echo`, on `server`: their requests go on the call's own SSE
 * answer (`relatedRequestId`), as `extra.sendRequest` would send them.
 */
const relaying = {
  async confirm(server, input, extra) {
    const r = await server.elicitInput(
      {
        mode: "form",
        message: `Confirm: ${input}`,
        requestedSchema: {
          type: "object",
          properties: { confirmed: { type: "boolean" }, note: { type: "string" } },
          required: ["confirmed"],
        },
      },
      { relatedRequestId: extra.requestId, timeout: RELAY_TIMEOUT_MS },
    );
    return text(r.action === "accept" ? `accepted ${JSON.stringify(r.content ?? {})}` : r.action);
  },
  async summarise(server, input, extra) {
    const r = await server.createMessage(
      { messages: [{ role: "user", content: { type: "text", text: `Summarise: ${input}` } }], maxTokens: 64 },
      { relatedRequestId: extra.requestId, timeout: RELAY_TIMEOUT_MS },
    );
    return text(r.content?.type === "text" ? r.content.text : JSON.stringify(r.content));
  },
  async roots(server, _input, extra) {
    const r = await server.listRoots(undefined, { relatedRequestId: extra.requestId, timeout: RELAY_TIMEOUT_MS });
    return text(r.roots.map((root) => root.uri).join("\n"));
  },
  async slow(_server, _input, extra) {
    const token = extra._meta?.progressToken;
    if (token === undefined) return { ...text("slow: the call carried no progressToken"), isError: true };
    for (const progress of [1, 2]) {
      await extra.sendNotification({ method: "notifications/progress", params: { progressToken: token, progress, total: 2, message: `step ${progress}` } });
      await new Promise((r) => setTimeout(r, 50));
    }
    return text("done after 2 progress notifications");
  },
};

function mcpServer() {
  const server = new Server(
    { name: "interop-echo", version: "1.0.0" },
    { capabilities: { tools: {}, logging: {} }, enforceStrictCapabilities: true },
  );
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const { name } = req.params;
    const input = String(req.params.arguments?.text ?? "");
    if (name === "echo") return text(input);
    if (!relaying[name]) throw new Error(`no tool ${name}`);
    try {
      const result = await relaying[name](server, input, extra);
      seen.push({ tool: name, ok: !result.isError });
      return result;
    } catch (e) {
      const message = String(e?.message ?? e);
      seen.push({ tool: name, ok: false, error: message });
      return { ...text(`${name}: ${message}`), isError: true };
    }
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
