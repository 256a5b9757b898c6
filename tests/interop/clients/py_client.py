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
of each with {"text": …} (answered with that text). The first target's client stays
open; with --expiry-wait S, once its access token has been expired for S seconds, it
calls again on that session ("expiry": the SDK must renew the token). Prints one JSON
line per target, one for "auth" after the first and one for "expiry":
{"step": …, "ok": …, "detail": …}.

With --relays '{"targets": [{"id": …, "url": …, "prefix": …}, …], "expect": {…}}' (issue
20), before the expiry wait, for each target: a client with elicitation, sampling and
roots callbacks (answering with `expect`'s accepted content, sampled text and root)
calls the upstream's `confirm`, `summarise`, `roots` and `slow` (with a progress
callback); each callback must have run once with what the upstream asked, each result
carry its answer, the progress callback have run twice. Then a client with none of the
callbacks (so none of the capabilities) calls `confirm`: the result must be an error
that is not a timeout. One JSON line per target.
"""

import argparse
import asyncio
import base64
import json
import sys
import time
import traceback
from contextlib import AsyncExitStack
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import Client, types
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
    text = str(e) if type(e) is RuntimeError else f"{type(e).__name__}: {e}"
    return text.replace("\n", " ")


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", required=True)
    p.add_argument("--mode", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--consent", required=True)
    p.add_argument("--login", default="alice")
    p.add_argument("--expiry-wait", type=float, default=0)
    p.add_argument("--relays", default="")
    a = p.parse_args()

    storage = MemoryStorage()
    landed: dict[str, str] = {}

    async def redirect_handler(url: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            a.node, a.consent, url, a.login, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
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

    def client_for(url: str, **callbacks) -> Client:
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
        return Client(streamable_http_client(url, http_client=http), mode=a.mode, read_timeout_seconds=30, **callbacks)

    async def exercise(client: Client, target: dict, label: str) -> None:
        step = "tools/list"
        try:
            tools = await client.list_tools()
            names = [t.name for t in tools.tools]
            missing = [t for t in target["tools"] if t not in names]
            if missing:
                raise AssertionError(f"{missing} not in tools/list: {names}")
            for name in target["tools"]:
                step = f"tools/call {name}"
                text = f"python {a.mode} {label} {name}"
                result = await client.call_tool(name, {"text": text})
                got = "".join(getattr(c, "text", "") for c in result.content)
                if result.is_error or got != text:
                    raise AssertionError(f"is_error={result.is_error} content={got!r}")
        except BaseException as e:
            raise RuntimeError(f"{step}: {describe(e)}") from e

    async def scenario(target: dict, first: bool, keep: AsyncExitStack | None) -> Client | None:
        """Connects and exercises one target; the client stays open on `keep` if given."""
        try:
            if keep is not None:
                try:
                    client = await keep.enter_async_context(client_for(target["url"]))
                except BaseException as e:
                    raise RuntimeError(f"connect: {describe(e)}") from e
                await exercise(client, target, target["id"])
                if first:
                    emit("auth", storage.tokens is not None, "" if storage.tokens else "no token")
                emit(target["id"], True, f"protocol {client.protocol_version}")
                return client
            version, done = None, False
            try:
                async with client_for(target["url"]) as c:
                    version = c.protocol_version
                    await exercise(c, target, target["id"])
                    done = True
            except BaseException as e:
                if version is None:
                    raise RuntimeError(f"connect: {describe(e)}") from e
                if not done:
                    raise
                # every check passed; the session ended badly
                emit(target["id"], True, f"protocol {version}; closing: {describe(e)}")
                return None
            emit(target["id"], True, f"protocol {version}")
        except BaseException as e:  # noqa: BLE001 (every failure is reported)
            if first:
                emit("auth", storage.tokens is not None, "" if storage.tokens else describe(e))
            emit(target["id"], False, describe(e))
            print(traceback.format_exc(), file=sys.stderr)
        return None

    def expiry_of(token: str) -> float:
        payload = token.split(".")[1]
        return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])

    async def relays(target: dict, expect: dict) -> str:
        """The relay checks on one target; answers the detail, raises naming the step."""
        calls: dict = {"elicitation": [], "sampling": [], "roots": 0}

        async def on_elicit(_ctx, params):
            calls["elicitation"].append(params.message)
            return types.ElicitResult(action="accept", content=expect["accepted"])

        async def on_sample(_ctx, params):
            calls["sampling"].append(getattr(params.messages[0].content, "text", None))
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text=expect["sampled"]),
                model="interop-fixed",
                stop_reason="endTurn",
            )

        async def on_roots(_ctx):
            calls["roots"] += 1
            return types.ListRootsResult(roots=[types.Root(uri=expect["root"], name="interop")])

        def text_of(result) -> str:
            return "".join(getattr(c, "text", "") for c in result.content)

        def name(tool: str) -> str:
            return target["prefix"] + tool

        text = f"python {a.mode} {target['id']}"
        passed: list[str] = []
        failed: list[str] = []

        async def check(step: str, run) -> None:
            """Runs one step whatever another's outcome; `run` answers what passed."""
            try:
                passed.append(await run())
            except Exception as e:  # noqa: BLE001 (every failure is reported)
                failed.append(f"{step}: {describe(e)}")

        async def call(c: Client, tool: str, **kw):
            # Past the upstream's own wait for an answer (15 s), so a lost relay shows as its error.
            return await c.call_tool(name(tool), {"text": text}, read_timeout_seconds=20, **kw)

        async def elicitation(client: Client) -> str:
            r = await call(client, "confirm")
            if calls["elicitation"] != [f"Confirm: {text}"]:
                raise AssertionError(f"the callback saw {calls['elicitation']}; the tool answered {text_of(r)!r}")
            got = text_of(r)
            accepted = json.loads(got[len("accepted ") :]) if got.startswith("accepted ") else None
            if r.is_error or accepted != expect["accepted"]:
                raise AssertionError(f"the tool answered is_error={r.is_error} {got!r}")
            return "elicitation"

        async def sampling(client: Client) -> str:
            r = await call(client, "summarise")
            if calls["sampling"] != [f"Summarise: {text}"]:
                raise AssertionError(f"the callback saw {calls['sampling']}; the tool answered {text_of(r)!r}")
            if r.is_error or text_of(r) != expect["sampled"]:
                raise AssertionError(f"the tool answered is_error={r.is_error} {text_of(r)!r}")
            return "sampling"

        async def roots(client: Client) -> str:
            r = await call(client, "roots")
            if calls["roots"] != 1:
                raise AssertionError(f"the callback ran {calls['roots']} time(s); the tool answered {text_of(r)!r}")
            if r.is_error or text_of(r) != expect["root"]:
                raise AssertionError(f"the tool answered is_error={r.is_error} {text_of(r)!r}")
            return "roots"

        async def progress(client: Client) -> str:
            seen: list[float] = []

            async def on_progress(value: float, _total: float | None, _message: str | None) -> None:
                seen.append(value)

            r = await call(client, "slow", progress_callback=on_progress)
            if r.is_error or seen != [1, 2]:
                raise AssertionError(f"the progress callback saw {seen}; the tool answered is_error={r.is_error} {text_of(r)!r}")
            return "progress 1, 2"

        async def without() -> str:
            async with client_for(target["url"]) as bare:
                try:
                    r = await call(bare, "confirm")
                    outcome = text_of(r) if r.is_error else None
                except Exception as e:  # noqa: BLE001 (an error answer is what is asked for)
                    outcome = f"the call failed: {describe(e)}"
                if outcome is None:
                    raise AssertionError(f"no error: the tool answered {text_of(r)!r}")
                if "timed out" in outcome.lower() or "timeout" in outcome.lower():
                    raise AssertionError(f"the upstream's request was not refused but timed out: {outcome}")
                return f"without the capabilities: {outcome}"

        step = "connect"
        try:
            async with client_for(
                target["url"], elicitation_callback=on_elicit, sampling_callback=on_sample, list_roots_callback=on_roots
            ) as client:
                step = "tools/list"
                names = [t.name for t in (await client.list_tools()).tools]
                missing = [name(t) for t in ("confirm", "summarise", "roots", "slow") if name(t) not in names]
                if missing:
                    raise AssertionError(f"{missing} not in tools/list: {names}")
                step = "the checks"
                for label, run in (("elicitation", elicitation), ("sampling", sampling), ("roots", roots), ("progress", progress)):
                    await check(label, lambda run=run: run(client))
            await check("without the capabilities", without)
        except BaseException as e:
            raise RuntimeError(f"{step}: {describe(e)}") from e
        if failed:
            raise RuntimeError("; ".join(failed) + (f" (passed: {'; '.join(passed)})" if passed else ""))
        return "relayed and answered: " + "; ".join(passed)

    targets = json.loads(a.targets)
    async with AsyncExitStack() as keep:
        first = None
        for i, target in enumerate(targets):
            try:
                client = await asyncio.wait_for(scenario(target, i == 0, keep if i == 0 else None), 90)
            except TimeoutError:
                emit(target["id"], False, "no outcome within 90 s")
                client = None
            if i == 0:
                first = client
        if a.relays:
            spec = json.loads(a.relays)
            for target in spec["targets"]:
                try:
                    emit(target["id"], True, await asyncio.wait_for(relays(target, spec["expect"]), 90))
                except TimeoutError:
                    emit(target["id"], False, "no outcome within 90 s")
                except BaseException as e:  # noqa: BLE001 (every failure is reported)
                    emit(target["id"], False, describe(e))
                    print(traceback.format_exc(), file=sys.stderr)
        if a.expiry_wait > 0:
            # The first connection, kept open, after its access token expired: the SDK
            # must renew it (with its refresh token) and the session go on.
            try:
                if first is None or storage.tokens is None:
                    raise RuntimeError(f"no open session on {targets[0]['id']}")
                before = storage.tokens.access_token
                wait = expiry_of(before) + a.expiry_wait - time.time()
                await asyncio.sleep(max(0, wait))
                await asyncio.wait_for(exercise(first, {"tools": targets[0]["tools"][:1]}, "expiry"), 60)
                if storage.tokens.access_token == before:
                    raise RuntimeError("the call worked but the client still holds its first token (no refresh seen)")
                emit("expiry", True, f"waited {wait:.0f} s; refreshed: {storage.tokens.refresh_token is not None}")
            except BaseException as e:  # noqa: BLE001
                emit("expiry", False, describe(e))
                print(traceback.format_exc(), file=sys.stderr)
        try:
            await keep.aclose()
        except BaseException:  # noqa: BLE001 (closing is not a scenario)
            pass
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
