//! API keys: only on the `Token` scheme, stored as hashes, refused when unknown.

use std::sync::Arc;

use async_trait::async_trait;
use latchkey_guard::{
    ApiKeyStore, ApiKeyStoreError, AuthSource, Authenticator, GuardError, InvalidReason, Principal,
    Role, SubjectId, TenantId, TokenAuthenticator, UnavailableReason, mint_api_key,
};
use latchkey_testkit::idp::KeyAlg;
use serde_json::json;

use crate::{Options, auth_headers, claims, fixture};

pub(crate) fn principal(subject: &str) -> Principal {
    Principal::new(
        TenantId::new("acme").unwrap(),
        SubjectId::new(subject).unwrap(),
        AuthSource::ApiKey,
    )
    .with_role(Role::Member)
    .with_scopes(["mcp"])
}

#[tokio::test]
async fn token_scheme_accepts_a_stored_key() {
    let f = fixture(Options::default()).await;
    let key = mint_api_key();
    f.store.insert(key.hash, principal("robot"));
    for scheme in ["Token", "token", "TOKEN"] {
        let p = f
            .auth
            .authenticate(&auth_headers(&format!("{scheme}   {}  ", key.key.expose())))
            .await
            .unwrap();
        assert_eq!(p.subject.as_str(), "robot");
        assert_eq!(p.source, AuthSource::ApiKey);
    }
    assert_eq!(f.idp.introspection_calls(), 0);
    assert_eq!(f.idp.jwks_fetches(), 0);
}

#[tokio::test]
async fn bearer_scheme_does_not_accept_an_api_key() {
    let f = fixture(Options {
        introspection: false,
        ..Options::default()
    })
    .await;
    let key = mint_api_key();
    f.store.insert(key.hash, principal("robot"));
    let r = f
        .auth
        .authenticate(&auth_headers(&format!("Bearer {}", key.key.expose())))
        .await;
    assert!(matches!(r, Err(GuardError::Invalid(_))), "{r:?}");
}

#[tokio::test]
async fn wrong_or_revoked_keys_are_refused() {
    let f = fixture(Options::default()).await;
    let key = mint_api_key();
    f.store.insert(key.hash, principal("robot"));
    let other = mint_api_key();
    let unknown = Err(GuardError::Invalid(InvalidReason::UnknownApiKey));
    assert_eq!(
        f.auth
            .authenticate(&auth_headers(&format!("Token {}", other.key.expose())))
            .await,
        unknown
    );
    // One character off.
    let mut almost = key.key.expose().to_owned();
    let last = almost.pop().unwrap();
    almost.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(
        f.auth
            .authenticate(&auth_headers(&format!("Token {almost}")))
            .await,
        unknown
    );
    assert!(f.store.revoke(&key.hash));
    assert_eq!(
        f.auth
            .authenticate(&auth_headers(&format!("Token {}", key.key.expose())))
            .await,
        unknown
    );
}

#[tokio::test]
async fn a_jwt_on_the_token_scheme_is_not_verified_as_oauth() {
    let f = fixture(Options::default()).await;
    let t = f.idp.mint(KeyAlg::Rs256, &claims(&f.idp, json!({})));
    assert_eq!(
        f.auth
            .authenticate(&auth_headers(&format!("Token {t}")))
            .await,
        Err(GuardError::Invalid(InvalidReason::UnknownApiKey))
    );
    assert_eq!(f.idp.jwks_fetches(), 0);
    assert_eq!(f.idp.introspection_calls(), 0);
}

#[tokio::test]
async fn token_scheme_without_a_store_is_invalid() {
    let f = fixture(Options {
        api_keys: false,
        ..Options::default()
    })
    .await;
    let key = mint_api_key();
    assert_eq!(
        f.auth
            .authenticate(&auth_headers(&format!("Token {}", key.key.expose())))
            .await,
        Err(GuardError::Invalid(InvalidReason::NoVerifier))
    );
}

#[derive(Debug)]
struct BrokenStore;

#[async_trait]
impl ApiKeyStore for BrokenStore {
    async fn lookup(&self, _: &[u8; 32]) -> Result<Option<Principal>, ApiKeyStoreError> {
        Err(ApiKeyStoreError("database is down".into()))
    }
}

#[tokio::test]
async fn a_failing_store_is_unavailable() {
    let mut t = TokenAuthenticator::new(crate::clock());
    t.api_keys = Some(Arc::new(BrokenStore));
    let auth = Authenticator::tokens(t);
    let key = mint_api_key();
    assert_eq!(
        auth.authenticate(&auth_headers(&format!("Token {}", key.key.expose())))
            .await,
        Err(GuardError::Unavailable(UnavailableReason::ApiKeyStore))
    );
}

#[tokio::test]
async fn required_scopes_apply_to_api_keys_too() {
    let f = fixture(Options {
        required_scopes: vec!["mcp".into(), "admin".into()],
        ..Options::default()
    })
    .await;
    let key = mint_api_key();
    f.store.insert(key.hash, principal("robot"));
    assert_eq!(
        f.auth
            .authenticate(&auth_headers(&format!("Token {}", key.key.expose())))
            .await,
        Err(GuardError::InsufficientScope {
            required: vec!["mcp".into(), "admin".into()]
        })
    );
}
