"""The Python MCP SDK's client (PyPI `mcp`, unmodified) against Latchkey, for
scripts/interop-clients.sh. Our glue only: an in-memory TokenStorage and the two
callbacks of its OAuthClientProvider (the redirect handler gives consent by HTTP on
oidc-provider's pages through consent.mjs; the callback handler hands back the code,
state and iss of the redirect). Everything else (the 401 challenge, PRM, AS metadata,
DCR, PKCE, the token request, the wire) is the SDK's.

Usage: python py_client.py --mode auto|legacy|2026-07-28 --node NODE
         --consent consent.mjs --targets '[{"id": …, "url": …, "tools": […]}, …]'
For each target in turn (one OAuth provider and token store for all, so only the
first needs consent): connect, tools/list (every name in `tools` listed), tools/call
of each with {"text": …} (answered with that text). Prints one JSON line per target,
and one for "auth" after the first: {"step": …, "ok": …, "detail": …}.
"""

import argparse
import asyncio
import json
import sys
import traceback
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT_URI = "http://127.0.0.1:9/callback"  # never listened on: consent.mjs stops at it


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def emit(step: str, ok: bool, detail: str = "") -> None:
    print(json.dumps({"step": step, "ok": ok, "detail": detail[:800]}), flush=True)


def describe(e: BaseException) -> str:
    # anyio task groups wrap the real error; show the innermost ones.
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    if isinstance(e, BaseExceptionGroup):
        return " | ".join(describe(x) for x in e.exceptions)
    text = f"{type(e).__name__}: {e}"
    return text.replace("\n", " ")


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--consent", required=True)
    a = p.parse_args()

    storage = MemoryStorage()
    landed: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            a.node, a.consent, url, "alice", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        if proc.returncode != 0:
            raise RuntimeError(f"consent failed: {err.decode().strip()}")
        q = parse_qs(urlsplit(out.decode().strip()).query)
        if "code" not in q:
            raise RuntimeError(f"the authorization server answered without a code: {q}")
        landed.update({k: v[0] for k, v in q.items()})

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=landed["code"], state=landed.get("state"), iss=landed.get("iss"))

    def client_for(url: str) -> Client:
        auth = OAuthClientProvider(
            server_url=url,
            client_metadata=OAuthClientMetadata(
                client_name="interop: Python MCP SDK",
                redirect_uris=[REDIRECT_URI],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",
            ),
            storage=storage,
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
        )
        http = httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(30.0))
        return Client(streamable_http_client(url, http_client=http), mode=a.mode, read_timeout_seconds=30)

    async def scenario(target: dict, first: bool) -> None:
        step = "connect"
        try:
            async with client_for(target["url"]) as client:
                version = client.protocol_version
                step = "tools/list"
                tools = await client.list_tools()
                names = [t.name for t in tools.tools]
                if first:
                    emit("auth", storage.tokens is not None, "" if storage.tokens else "no token after the first request")
                missing = [t for t in target["tools"] if t not in names]
                if missing:
                    raise AssertionError(f"{missing} not in tools/list: {names}")
                for name in target["tools"]:
                    step = f"tools/call {name}"
                    text = f"python {a.mode} {target['id']} {name}"
                    result = await client.call_tool(name, {"text": text})
                    got = "".join(getattr(c, "text", "") for c in result.content)
                    if result.is_error or got != text:
                        raise AssertionError(f"is_error={result.is_error} content={got!r}")
                step = "close"
                emit(target["id"], True, f"protocol {version}")
        except BaseException as e:  # noqa: BLE001 (every failure is reported)
            if step == "close":  # the session ended badly after every check passed
                emit(target["id"], True, f"protocol {version}; closing: {describe(e)}")
                return
            if first and step in ("connect", "tools/list"):
                emit("auth", storage.tokens is not None, "" if storage.tokens else describe(e))
            emit(target["id"], False, f"{step}: {describe(e)}")
            print(traceback.format_exc(), file=sys.stderr)

    for i, target in enumerate(json.loads(a.targets)):
        try:
            await asyncio.wait_for(scenario(target, i == 0), 90)
        except TimeoutError:
            emit(target["id"], False, "no outcome within 90 s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
