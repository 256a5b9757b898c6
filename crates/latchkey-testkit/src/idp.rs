//! A scripted identity provider on loopback for the inbound guard's tests: a JWKS
//! (RS256, ES256 and Ed25519 keys, rotation switchable at runtime, fault modes), an
//! RFC 7662 introspection endpoint (scripted answers, fault modes) and token minting.
//! Every JWKS fetch and introspection call is counted and recorded.
//!
//! The keys are fixed test fixtures generated for this file; they protect nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::Recorded;

/// The signing algorithms the scripted provider holds keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl KeyAlg {
    /// All three.
    pub const ALL: [KeyAlg; 3] = [KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa];

    fn algorithm(self) -> Algorithm {
        match self {
            KeyAlg::Rs256 => Algorithm::RS256,
            KeyAlg::Es256 => Algorithm::ES256,
            KeyAlg::EdDsa => Algorithm::EdDSA,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            KeyAlg::Rs256 => "rsa",
            KeyAlg::Es256 => "ec",
            KeyAlg::EdDsa => "ed",
        }
    }
}

/// How the JWKS endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksMode {
    /// The current generation's public keys.
    Serve,
    /// HTTP 500.
    Down,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
}

/// How the introspection endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionMode {
    /// The scripted answer for the token, `{"active": false}` for unknown tokens.
    Serve,
    /// HTTP 500.
    Down,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// HTTP 401, as if Latchkey's client credentials were wrong.
    RefuseClient,
    /// Waits this long, then answers as `Serve`.
    Slow(Duration),
}

struct IdpKey {
    kid: String,
    alg: KeyAlg,
    encoding: EncodingKey,
    jwk: Jwk,
}

#[derive(Debug)]
struct IdpState {
    generation: usize,
    jwks_mode: JwksMode,
    introspection_mode: IntrospectionMode,
    jwks_fetches: usize,
    introspections: Vec<Recorded>,
    answers: HashMap<String, Value>,
}

#[derive(Clone)]
struct IdpShared {
    keys: Arc<Vec<Vec<IdpKey>>>,
    state: Arc<Mutex<IdpState>>,
}

impl IdpShared {
    fn lock(&self) -> MutexGuard<'_, IdpState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running scripted identity provider.
pub struct ScriptedIdp {
    /// `http://localhost:<port>`, also the issuer.
    pub base: String,
    shared: IdpShared,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ScriptedIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedIdp")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Drop for ScriptedIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn load_generation(generation: usize, pems: [&str; 3]) -> std::io::Result<Vec<IdpKey>> {
    let mut out = Vec::new();
    for (alg, pem) in KeyAlg::ALL.into_iter().zip(pems) {
        let encoding = match alg {
            KeyAlg::Rs256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            KeyAlg::Es256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            KeyAlg::EdDsa => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .map_err(std::io::Error::other)?;
        let kid = format!("{}-{}", alg.prefix(), generation + 1);
        let mut jwk =
            Jwk::from_encoding_key(&encoding, alg.algorithm()).map_err(std::io::Error::other)?;
        jwk.common.key_id = Some(kid.clone());
        out.push(IdpKey {
            kid,
            alg,
            encoding,
            jwk,
        });
    }
    Ok(out)
}

impl ScriptedIdp {
    /// Starts the provider on an ephemeral loopback port, serving generation 1 keys.
    pub async fn start() -> std::io::Result<Self> {
        let keys = vec![
            load_generation(0, [RSA_1_PEM, EC_1_PEM, ED_1_PEM])?,
            load_generation(1, [RSA_2_PEM, EC_2_PEM, ED_2_PEM])?,
        ];
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let base = format!("http://localhost:{}", listener.local_addr()?.port());
        let shared = IdpShared {
            keys: Arc::new(keys),
            state: Arc::new(Mutex::new(IdpState {
                generation: 0,
                jwks_mode: JwksMode::Serve,
                introspection_mode: IntrospectionMode::Serve,
                jwks_fetches: 0,
                introspections: Vec::new(),
                answers: HashMap::new(),
            })),
        };
        let app = Router::new()
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { base, shared, task })
    }

    /// The issuer identifier (the base URL, no trailing slash).
    pub fn issuer(&self) -> String {
        self.base.clone()
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base)
    }

    /// The introspection URL.
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect", self.base)
    }

    /// Switches to the other key generation: the JWKS then publishes only the new keys
    /// and [`ScriptedIdp::mint`] signs with them.
    pub fn rotate(&self) {
        let mut s = self.shared.lock();
        s.generation = (s.generation + 1) % self.shared.keys.len();
    }

    /// Sets how the JWKS endpoint answers.
    pub fn set_jwks_mode(&self, mode: JwksMode) {
        self.shared.lock().jwks_mode = mode;
    }

    /// Sets how the introspection endpoint answers.
    pub fn set_introspection_mode(&self, mode: IntrospectionMode) {
        self.shared.lock().introspection_mode = mode;
    }

    /// JWKS requests received so far.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.lock().jwks_fetches
    }

    /// Introspection requests received so far.
    pub fn introspection_calls(&self) -> usize {
        self.shared.lock().introspections.len()
    }

    /// Every introspection request, in order (headers and form fields).
    pub fn introspection_requests(&self) -> Vec<Recorded> {
        self.shared.lock().introspections.clone()
    }

    /// Scripts the introspection answer for `token`.
    pub fn set_introspection(&self, token: &str, answer: Value) {
        self.shared.lock().answers.insert(token.to_owned(), answer);
    }

    /// The `kid` of the current key for `alg`.
    pub fn kid(&self, alg: KeyAlg) -> String {
        let generation = self.shared.lock().generation;
        self.shared.keys[generation]
            .iter()
            .find(|k| k.alg == alg)
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// A JWT with `claims`, signed by the current key for `alg`, its `kid` in the header.
    pub fn mint(&self, alg: KeyAlg, claims: &Value) -> String {
        let kid = self.kid(alg);
        self.mint_with_kid(alg, claims, Some(&kid))
    }

    /// A JWT signed by the current key for `alg` with `kid` as given (or none).
    pub fn mint_with_kid(&self, alg: KeyAlg, claims: &Value, kid: Option<&str>) -> String {
        let generation = self.shared.lock().generation;
        let Some(key) = self.shared.keys[generation].iter().find(|k| k.alg == alg) else {
            return String::new();
        };
        let mut header = Header::new(alg.algorithm());
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap_or_default()
    }

    /// The SPKI PEM of the generation-1 RSA public key: what an attacker would use as
    /// an HMAC secret in an algorithm-confusion attack.
    pub fn rsa_public_key_pem(&self) -> &'static str {
        RSA_1_PUBLIC_PEM
    }
}

/// An HS256 JWT signed with `secret`, with `kid` in the header when given.
pub fn mint_hs256(secret: &[u8], claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap_or_default()
}

/// A compact JWS with an arbitrary `header` and an empty signature (`alg: none` and
/// other hand-made tokens).
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

async fn jwks(State(s): State<IdpShared>) -> Response {
    let (mode, generation) = {
        let mut st = s.lock();
        st.jwks_fetches += 1;
        (st.jwks_mode, st.generation)
    };
    match mode {
        JwksMode::Serve => {
            let set = JwkSet {
                keys: s.keys[generation].iter().map(|k| k.jwk.clone()).collect(),
            };
            axum::Json(set).into_response()
        }
        JwksMode::Down => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        JwksMode::Garbage => (StatusCode::OK, "<html>not a key set</html>").into_response(),
    }
}

async fn introspect(
    State(s): State<IdpShared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let recorded = Recorded {
        path: "/introspect".into(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: form.clone(),
    };
    let (mode, answer) = {
        let mut st = s.lock();
        st.introspections.push(recorded);
        let answer = form
            .get("token")
            .and_then(|t| st.answers.get(t).cloned())
            .unwrap_or_else(|| json!({"active": false}));
        (st.introspection_mode, answer)
    };
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        return (StatusCode::UNAUTHORIZED, "client authentication required").into_response();
    }
    match mode {
        IntrospectionMode::Serve => axum::Json(answer).into_response(),
        IntrospectionMode::Slow(d) => {
            tokio::time::sleep(d).await;
            axum::Json(answer).into_response()
        }
        IntrospectionMode::Down => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        IntrospectionMode::Garbage => (StatusCode::OK, "not json").into_response(),
        IntrospectionMode::RefuseClient => {
            (StatusCode::UNAUTHORIZED, "invalid_client").into_response()
        }
    }
}

const RSA_1_PEM: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAs0BRrF8cf28s/yxBtCY6fOAeooK9bH6Js1YYI2YA6ca+YZFk\n\
bcmcvrh5BQ2F/HslyI/I9nElk96YsSuDB3NE7StccBKieqmKopGEVTGLZL7NQ4x1\n\
D4U2iPGkuWwoZVoY3hlQNV/5qOXKICa0Nsio41tDkPvJl3WaH0LS5soXk8JcES1C\n\
M+unZrLOcgQsSy6vRxpWaFEbmLsFnggdQ06PaAGur7YsDjTSfMsS1OoaGiGLRAc6\n\
bGnTkINyrYfSDtcD4UYbCdAyPGD7Ab98Pg4bp9MN6Qqg1Cka3NpyhX6CJ8neHhh7\n\
KE86sVxH/vXzK0tu8qiDYy4NuUImjrE5SHi0FwIDAQABAoIBAECWRldzldMc/fub\n\
uLjupVhlcORhc1tqZLdnqB7pHB8f621AdA1S/dWCpqh5bPPCc6TGmkSiFEYpiJ8d\n\
7IJ8uDM00oPXUxAbksZs5F/GEFHmphNWwr8q4rGJUC83l36dbiRovovc3xpKYgAf\n\
sgOjXac+NSRCdSrLxxLIgzGBU+l7HVUiYfsDd1pFrrJkmIdVXMew052yOayQ2Urm\n\
Jw3yqBOjHJjpgEadi89fjT3FP/E5qJGj3OR9YEF5SSgg6zprrP59ZNMUZPp7Rdji\n\
SYSvTxj2JWevOnFMZiSrDIRS7LevATCvbwnGT7iNZgw1uyrZ94VU/kQiY2/7BNJV\n\
+QrmCjECgYEA76OPzfjSjrOBtWawkvdubEBbF0we3xqOBkcc0weSviXAwrZEiWmR\n\
U/VqadVpAWhM+78+Ff3jBVJV1Nm5SeC6AR0siezmlIm0dA4K54KcSVlyHyrcExvu\n\
Iss3hkM8KqXcp0wL2nY40cy9eWLXTO31s9+Psc/2jSzeqJPINXA4zEsCgYEAv31L\n\
VP5Z1cq/u8n2fHgXYQtpt+UrPWUbC9TEi24gOguD5STv4IW+YBlTjroNJNpm2gac\n\
+F63qz0kdbjP0XNxVrII1fLFaAZ+eI2rDuZo02i1d4lsLDAlCGfU0nbHdVXfJ5pi\n\
fdx2GR2Llxun7NoKXCLw4nmPUbCBiOSn44z6v+UCgYB9C+aAXnTRDg6DMCC3r/Go\n\
/zQJRild1ieCUx1RaURDgMPDVwUQh0vUed2beEcg+uIhA7xMEX2jS0GKnko3qNKm\n\
vih9mGcB35GQdbtu7xLKm6gXZ3ALcKmk8lH496CvyHkJu3778nDX2XSNoOwkMo/h\n\
2qjK6nAHXwCZCvSQHg0lXQKBgDA+Ib99AScCmIF4JVhAbStu06iX3Ofv0/uMFCRI\n\
j2fwRL9zKdf3+fl+B/YaW3tgZq8hIWTVgBJtKgValUjge7pqyh0Ut7U4hZ5bmq/7\n\
ToeMhsNh5NXRH1NZzV1kvWWLR9hTZeLtqvcy4VslhY3/dMK3rtZv57Kd9FSHvuBu\n\
QTIdAoGAY8Ul2i1sD68vQI/GgTIjqZOXBCEgL4UwSvomZ8h8st4sjSV2mtLHeG3K\n\
FnDACvvsKCHEeQUOSxUEsp3TdW/a+qo5D8oFVQrujk2DEcz/qXSOsm6ygQL9lQjx\n\
QnaaQHnwRbsC/Kt1PBQopGUc9DMhgsaQ81tFfXf7+PlIE4rNfxY=\n\
-----END RSA PRIVATE KEY-----\n";

const RSA_2_PEM: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEpAIBAAKCAQEA1+eGE6iODFdvlmOekrxEO1Q++f3JfbLLCgpmnx069CyxUvsr\n\
coNWQbm37j2JFORHc74xYrApuwIOirZ+3vR2TOwa1q2wgJ+asaUwO6eq7nGcLkXw\n\
CajPDU1ZLxV7eh2lKExFzzW78SHNc9ywF1aqLCg02PP8DDPLoSiGSPOWM4nmCW1J\n\
RkVIF25tD0gq5PtCPr+seEe11DLi1YrSmSsQHM5VnaG6SFFVpwS3uM9EdK/QBgZF\n\
75cqoL4Iy53bwvSuJlSZZ6o1WbIOBSD1H2rhEXib4pveIM6fHtQZXHyPFokv+Uv6\n\
tmJX7WEBkGaq9tXIZri9KYmEtRwAO9HmGz6qNwIDAQABAoIBABcjyUryFcdc16jW\n\
pHg1lVqGfPluKdo+/2PkGXuUNm1VHOw330A2s1f3/66ZCcgjb0UIbWKWXuKcJdLY\n\
HGDo8oTsCTRZCUG/2WSQv8qk/bzwkDylYkSmwwo58AUL2GAOLVVUV2cN60a8yLhS\n\
Ps1BjJuO85sNC0aDhp+PKFVJRh/fxVLNJm5e0z393JlePjy8WpPLtOCHI1p8Kzeh\n\
S7dXZtoTh5fgsxAX9W4QyMjf+lPnDLB+79mDDcorq0sEbykuShzvGMHKbak3J2Fp\n\
yAwbMgpzUpd3epeTv8lm1by6A3qESZfsTvfWJ0E7++WAxyNV+maxhyROG09kGOKz\n\
DS1IzwECgYEA61oC6CDMd7GrvDHTPCJ2IefOSA1qn8Fjx8l6K53d9CwyAij8Kx8s\n\
PUPSjyZDLz20/eVO/zbT3STh5JPiJcKhMMgVsX7VujQDU/4rIxT7z/gYNAI/IaUU\n\
0J/iJLrx+m7O8f5xZEtePRSpr6nFXtvo+/gsEQCRxK5ywOvONQl9C/kCgYEA6ti6\n\
hExZ2UK7TqIqA1pVoArnvvEhwXVgrwbxn6tMAjpKoAPMOyi+QrzGBvsxlDLY+hb2\n\
Pj/yRWvFMyLAAVBPSaR4bgAKJnVlz9/Y5tHAMPdb2TI37FXhxm+KxUQ/WQJqM58V\n\
0SoZttwYzzj5eXDAj+f94Zi9cyRsTHomGgXgE68CgYA4/5O0pDzgwCbXbTm7Vp1F\n\
mN5clOM9zZhcym7MIW+fsxRpcYOg7evI6qQUBzA+QLOUyfRX2u90n3oV4brjaj+f\n\
kNWwJwecEPy9WtEXrf1OYMd70Q95FoH0BMTAIIZ6IFv+P6E2qQopwNdXs8YZMyk5\n\
3ODPPVQQTi98iZ9nOOUQAQKBgQCc9RbLfx/5xdDcACPmM8TQfxleE1kFLEbfE9v/\n\
ZAQb5QulIISp8VQf1Hzhg5ciPk2n8BrJhgGNBjc5MvtypVMom+TlV99wzruqECiu\n\
M/eogln/ssGPkeKgtkHgD/nqqmOCdsulDOc8wKNQM/sAgCwiweF7mpLb1rcO8gBv\n\
Gggl/wKBgQDXlPrKoGfRCDAE+qWyeNtPwaboo7QCWpUFJeAbnnSjEOvV/tZBv0kF\n\
iqDYF5ppTDqXaghXQK6zWEnoF0/dC1fmr6tHFXwNHds+ixgh3TsXEOOkgFLD/vLk\n\
+dVTnhoQZikIQG25qyKr95HZc9RNPBB8MnOrF30Ec8TmETkwKIwq6w==\n\
-----END RSA PRIVATE KEY-----\n";

const EC_1_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgXgWSh2VvWHl2108O\n\
4GUVTUTmoBfPEFCDoahpS4uJwjihRANCAAQ3Ctg6iEFBIo425LjVgrea4tCsMVL9\n\
o0TPC068sGnj/SkDeSP1sbLREPMqJ4qWfYnu/9y+D+n325oixzkT7Qxf\n\
-----END PRIVATE KEY-----\n";

const EC_2_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+9imHuTe4uzzqIJD\n\
Ltv83s9OA9IkD7pm2XwuXAb50N6hRANCAAQCjqAqHtUqfRrTDTb8Vd8fk4jWEo8m\n\
5RUscp6m1ImAvy2N7BfvyBhZh54riVk+ELCi2tl3e+Vmz/gkhWT0jaFu\n\
-----END PRIVATE KEY-----\n";

const ED_1_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIKHWzkEdbKSgnjBawc6VElFCVNmSw6k+vxjV73plqL7U\n\
-----END PRIVATE KEY-----\n";

const ED_2_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIBClrI2331W4b3IRZWE95P+mztrKM5RSOG0pJsdRoc11\n\
-----END PRIVATE KEY-----\n";

const RSA_1_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAs0BRrF8cf28s/yxBtCY6\n\
fOAeooK9bH6Js1YYI2YA6ca+YZFkbcmcvrh5BQ2F/HslyI/I9nElk96YsSuDB3NE\n\
7StccBKieqmKopGEVTGLZL7NQ4x1D4U2iPGkuWwoZVoY3hlQNV/5qOXKICa0Nsio\n\
41tDkPvJl3WaH0LS5soXk8JcES1CM+unZrLOcgQsSy6vRxpWaFEbmLsFnggdQ06P\n\
aAGur7YsDjTSfMsS1OoaGiGLRAc6bGnTkINyrYfSDtcD4UYbCdAyPGD7Ab98Pg4b\n\
p9MN6Qqg1Cka3NpyhX6CJ8neHhh7KE86sVxH/vXzK0tu8qiDYy4NuUImjrE5SHi0\n\
FwIDAQAB\n\
-----END PUBLIC KEY-----\n";
