"""The second MCP server behind Latchkey in the client interop run: the Python MCP
SDK's own MCPServer (PyPI `mcp`, unmodified) over its streamable HTTP transport, which
speaks both the 2025-11-25 session wire and the stateless 2026-07-28 wire, with no
authorization (Latchkey adds it with "auth_type": "none"). One tool, `echo`.

Usage: python py_upstream.py --port N   (serves http://127.0.0.1:N/mcp; uvicorn says
"Uvicorn running on …" on stderr once it listens)
"""

import argparse

from mcp.server.mcpserver import MCPServer

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
args = p.parse_args()

server = MCPServer("interop-py-echo")


@server.tool(description="Echoes its text")
def echo(text: str) -> str:
    return text


server.run("streamable-http", host="127.0.0.1", port=args.port)
