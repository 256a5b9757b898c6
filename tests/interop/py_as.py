"""An OAuth 2.1 authorization server built on Authlib (PyPI `Authlib`, unmodified, with
its Flask integration) for the interop matrix. Only this glue is ours: in-memory
storage, a one-button consent page, and the wiring of Authlib's own grants and
endpoints:

- authorization code with PKCE required, S256 only (rfc6749 + rfc7636 `CodeChallenge`);
- dynamic client registration, open (rfc7591 `ClientRegistrationEndpoint`);
- refresh tokens with rotation (rfc6749 `RefreshTokenGrant`, a new refresh token each
  time, the old one revoked) and reuse detection (a rotated-away refresh token
  presented again revokes its whole family, as oidc-provider does);
- revocation (rfc7009 `RevocationEndpoint`), of a refresh token's whole family;
- RFC 8414 metadata; JWT access tokens (rfc9068 `JWTBearerTokenGenerator`,
  `typ: at+jwt`) for one resource (RFC 8707: `aud` is that resource; a `resource`
  parameter naming anything else is refused with `invalid_target`).

Usage: python py_as.py --resource URL [--at-ttl SECONDS] [--port N]
Prints one JSON line {"issuer": ...} once it listens on 127.0.0.1. GET /_test/events
answers the recorded events in the shape tests/interop/as.mjs records them
(grant.success with grant_type, grant.error, grant.revoked, refresh_token.destroyed,
registration_create.success, authorization.request); never a secret. POST
/_test/revoke-grants ends every grant. A restart on the same port is the same issuer
that forgot everything, clients included (in-memory storage).
"""

import argparse
import json
import secrets
import sys
import threading
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.models import AuthorizationCodeMixin, ClientMixin, TokenMixin
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify, request
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import make_server

ap = argparse.ArgumentParser()
ap.add_argument("--resource", required=True)
ap.add_argument("--at-ttl", type=int, default=30)
ap.add_argument("--port", type=int, default=0)
args = ap.parse_args()
RESOURCE = args.resource
SCOPE = "mcp:tools"

app = Flask(__name__)
httpd = make_server("127.0.0.1", args.port, app, threaded=True)
ISSUER = f"http://127.0.0.1:{httpd.server_port}"

lock = threading.Lock()
events = []


def record(name, **fields):
    with lock:
        e = {"n": len(events) + 1, "at": int(time.time() * 1000), "name": name, **fields}
        events.append(e)
    sys.stderr.write(json.dumps(e) + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------
# Storage (in memory) and Authlib's model interfaces.


class Client(ClientMixin):
    def __init__(self, info, metadata):
        self.client_id = info["client_id"]
        self.client_secret = info.get("client_secret")
        self.info = info
        self.metadata = metadata

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        uris = self.metadata.get("redirect_uris") or []
        return uris[0] if uris else None

    def get_allowed_scope(self, scope):
        if not scope:
            return ""
        allowed = set((self.metadata.get("scope") or SCOPE).split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in (self.metadata.get("redirect_uris") or [])

    def check_client_secret(self, client_secret):
        return self.client_secret is not None and secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint == "token":
            return method == self.metadata.get("token_endpoint_auth_method", "client_secret_basic")
        return True

    def check_response_type(self, response_type):
        return response_type in (self.metadata.get("response_types") or ["code"])

    def check_grant_type(self, grant_type):
        return grant_type in (self.metadata.get("grant_types") or ["authorization_code"])


class Code(AuthorizationCodeMixin):
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


class Token(TokenMixin):
    def __init__(self, **kw):
        self.revoked = False
        self.__dict__.update(kw)

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return False  # refresh tokens do not expire here

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return USER

    def get_client(self):
        return clients.get(self.client_id)


class User:
    def get_user_id(self):
        return "alice"


USER = User()
clients = {}  # client_id -> Client
codes = {}  # code -> Code
refresh_tokens = {}  # refresh token -> Token (kept after rotation, revoked, for reuse detection)
access_tokens = {}  # access token -> Token (for revocation by access token)


def query_client(client_id):
    return clients.get(client_id)


def save_token(token, req):
    family = getattr(req, "refresh_family", None) or secrets.token_hex(8)
    t = Token(
        client_id=req.client.get_client_id(),
        scope=token.get("scope", ""),
        expires_in=token.get("expires_in", 0),
        family=family,
    )
    access_tokens[token["access_token"]] = t
    if token.get("refresh_token"):
        refresh_tokens[token["refresh_token"]] = t


def revoke_family(family, reason):
    n = 0
    for t in list(refresh_tokens.values()) + list(access_tokens.values()):
        if t.family == family and not t.revoked:
            t.revoked = True
            n += 1
    record("grant.revoked", grant=family, reason=reason)
    record("refresh_token.destroyed", grant=family)
    return n


# ---------------------------------------------------------------------------------
# Authlib's grants and endpoints, wired.


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code, req):
        codes[code] = Code(
            code=code,
            client_id=req.client.get_client_id(),
            redirect_uri=req.payload.redirect_uri,
            scope=req.payload.scope,
            code_challenge=req.payload.data.get("code_challenge"),
            code_challenge_method=req.payload.data.get("code_challenge_method"),
        )

    def query_authorization_code(self, code, client):
        c = codes.get(code)
        if c and c.client_id == client.get_client_id():
            return c
        return None

    def delete_authorization_code(self, authorization_code):
        codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return USER


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token):
        t = refresh_tokens.get(refresh_token)
        if t is None:
            return None
        if t.revoked:
            # Reuse detection: a refresh token already rotated away (or revoked) is
            # presented again; the whole family is revoked.
            if getattr(t, "rotated", False):
                revoke_family(t.family, "refresh token reused")
            return None
        self.request.refresh_family = t.family
        return t

    def authenticate_user(self, refresh_token):
        return USER

    def revoke_old_credential(self, refresh_token):
        refresh_token.revoked = True
        refresh_token.rotated = True
        record("refresh_token.consumed", grant=refresh_token.family)


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token_string, token_type_hint):
        if token_type_hint == "access_token":
            return access_tokens.get(token_string) or refresh_tokens.get(token_string)
        return refresh_tokens.get(token_string) or access_tokens.get(token_string)

    def revoke_token(self, token, req):
        revoke_family(token.family, "revocation endpoint")


class Registration(ClientRegistrationEndpoint):
    def authenticate_token(self, req):
        return True  # open registration

    def save_client(self, client_info, client_metadata, req):
        client = Client(client_info, client_metadata)
        clients[client.client_id] = client
        record(
            "registration_create.success",
            client_id=client.client_id,
            scope=client_metadata.get("scope"),
            auth_method=client_metadata.get("token_endpoint_auth_method"),
        )
        return client

    def get_server_metadata(self):
        return METADATA


# A key id of its own per process: a restarted AS (which forgot everything) signs with a
# new key, which resource servers must fetch rather than take for the old one.
KEY = RSAKey.generate_key(2048, parameters={"kid": f"interop-{secrets.token_hex(4)}", "alg": "RS256", "use": "sig"})


class AccessTokens(JWTBearerTokenGenerator):
    def get_jwks(self):
        return KeySet([KEY])

    def get_audiences(self, client, user, scope):
        return RESOURCE


METADATA = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "registration_endpoint": f"{ISSUER}/register",
    "revocation_endpoint": f"{ISSUER}/revoke",
    "jwks_uri": f"{ISSUER}/jwks",
    "scopes_supported": [SCOPE],
    "response_types_supported": ["code"],
    "grant_types_supported": ["authorization_code", "refresh_token"],
    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
    "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
    "code_challenge_methods_supported": ["S256"],
}

class S256Only(CodeChallenge):
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]


server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
server.register_grant(AuthorizationCodeGrant, [S256Only(required=True)])
server.register_grant(RefreshTokenGrant)
server.register_endpoint(Revocation)
server.register_endpoint(Registration)
server.register_token_generator(
    "default",
    AccessTokens(
        ISSUER,
        alg="RS256",
        refresh_token_generator=lambda client, grant_type, user, scope: secrets.token_urlsafe(32),
        expires_generator=lambda client, grant_type: args.at_ttl,
    ),
)


def wrong_resource():
    """RFC 8707: only RESOURCE (or none) is accepted."""
    asked = request.values.getlist("resource")
    if any(r != RESOURCE for r in asked):
        return jsonify(error="invalid_target", error_description="unknown resource"), 400
    return None


# ---------------------------------------------------------------------------------
# Routes.


@app.get("/.well-known/oauth-authorization-server")
def metadata():
    return jsonify(METADATA)


@app.get("/jwks")
def jwks():
    return jsonify(KeySet([KEY]).as_dict(private=False))


CONSENT_PAGE = """<!doctype html><title>Consent</title>
<p>Allow this client to use the MCP server ({scope})?</p>
<form method="post"><button type="submit">Continue</button></form>"""


@app.route("/authorize", methods=["GET", "POST"])
def authorize():
    if request.method == "GET":
        record(
            "authorization.request",
            scope=request.args.get("scope"),
            prompt=request.args.get("prompt"),
            resource=request.args.get("resource"),
        )
    bad = wrong_resource()
    if bad:
        return bad
    if request.method == "GET":
        try:
            grant = server.get_consent_grant(end_user=USER)
        except Exception as e:  # Authlib's OAuth2Error: shown, not redirected
            record("authorization.error", error=getattr(e, "error", str(e)))
            return jsonify(error=getattr(e, "error", "invalid_request"), error_description=getattr(e, "description", "")), 400
        scope = grant.request.payload.scope or ""
        return CONSENT_PAGE.format(scope=scope.replace("<", "&lt;"))
    # The form posts back to the same URL: its query is the authorization request.
    return server.create_authorization_response(grant_user=USER)


@app.post("/token")
def token():
    bad = wrong_resource()
    if bad:
        record("grant.error", grant_type=request.form.get("grant_type"), error="invalid_target")
        return bad
    resp = server.create_token_response()
    body = resp.get_json(silent=True) or {}
    grant_type = request.form.get("grant_type")
    if resp.status_code == 200:
        record("grant.success", grant_type=grant_type, refresh_token_issued=bool(body.get("refresh_token")), scope=body.get("scope"))
    else:
        record("grant.error", grant_type=grant_type, error=body.get("error"), error_description=body.get("error_description"))
    return resp


@app.post("/revoke")
def revoke():
    return server.create_endpoint_response(Revocation.ENDPOINT_NAME)


@app.post("/register")
def register():
    resp = server.create_endpoint_response(Registration.ENDPOINT_NAME)
    if resp.status_code >= 400:
        body = resp.get_json(silent=True) or {}
        record("registration_create.error", error=body.get("error"), error_description=body.get("error_description"))
    return resp


@app.post("/_test/revoke-grants")
def test_revoke_grants():
    """The AS ends every grant, as an administrator revoking access would (refresh
    tokens then fail with invalid_grant)."""
    families = {t.family for t in refresh_tokens.values() if not t.revoked}
    for f in families:
        revoke_family(f, "administrator")
    record("test.grants_revoked", count=len(families))
    return jsonify({})


@app.get("/_test/events")
def test_events():
    with lock:
        return jsonify(list(events))


print(json.dumps({"issuer": ISSUER}, separators=(",", ":")), flush=True)
httpd.serve_forever()
