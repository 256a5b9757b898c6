//! Web sign-in on both backends (issue 19): a sign-in under way is taken once, stale
//! ones are swept, their number is bounded; a session is found by its hash, touched at
//! most once a minute, swept once ended, deleted at sign-out.

use std::sync::Arc;

use latchkey_vault::Store;
use latchkey_vault::store::{SESSION_TOUCH_SECS, WebLoginRow, WebSessionRow};

use super::NOW;

fn h(n: u8) -> [u8; 32] {
    [n; 32]
}

fn login(n: u8, at: i64) -> WebLoginRow {
    WebLoginRow {
        id_hash: h(n),
        state_hash: h(n.wrapping_add(100)),
        nonce: format!("nonce-{n}"),
        return_to: "/".into(),
        created_at: at,
    }
}

fn session(n: u8, at: i64, lifetime: i64) -> WebSessionRow {
    WebSessionRow {
        id_hash: h(n),
        tenant: "t1".into(),
        subject: format!("user-{n}"),
        role: "member".into(),
        display_name: Some("A Person".into()),
        created_at: at,
        last_seen_at: at,
        expires_at: at + lifetime,
    }
}

async fn suite(store: Arc<dyn Store>) {
    // Sign-ins under way: single use, the stale swept, at most `max_live`.
    assert!(
        store
            .insert_web_login(&login(1, NOW), NOW - 600, 3)
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_web_login(&login(2, NOW), NOW - 600, 3)
            .await
            .unwrap()
    );
    let taken = store.take_web_login(&h(1)).await.unwrap().unwrap();
    assert_eq!(taken, login(1, NOW));
    assert!(store.take_web_login(&h(1)).await.unwrap().is_none(), "once");
    assert!(
        store
            .insert_web_login(&login(3, NOW), NOW - 600, 3)
            .await
            .unwrap()
    );
    assert!(
        store
            .insert_web_login(&login(4, NOW), NOW - 600, 3)
            .await
            .unwrap()
    );
    assert!(
        !store
            .insert_web_login(&login(5, NOW), NOW - 600, 3)
            .await
            .unwrap(),
        "three under way: the fourth is not recorded"
    );
    assert!(store.take_web_login(&h(5)).await.unwrap().is_none());
    // Ten minutes on, the old ones are swept and new ones fit again.
    let later = NOW + 601;
    assert!(
        store
            .insert_web_login(&login(6, later), later - 600, 3)
            .await
            .unwrap()
    );
    assert!(
        store.take_web_login(&h(2)).await.unwrap().is_none(),
        "swept"
    );

    // Sessions: found by hash, touched at most once a minute, deleted at sign-out.
    store
        .insert_web_session(&session(10, NOW, 3600))
        .await
        .unwrap();
    store
        .insert_web_session(&session(11, NOW, 60))
        .await
        .unwrap();
    let s = store.web_session(&h(10)).await.unwrap().unwrap();
    assert_eq!(s, session(10, NOW, 3600));
    assert!(
        !store.touch_web_session(&h(10), NOW + 10).await.unwrap(),
        "too soon"
    );
    assert!(
        store
            .touch_web_session(&h(10), NOW + SESSION_TOUCH_SECS)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .web_session(&h(10))
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        NOW + SESSION_TOUCH_SECS
    );
    // A new session sweeps the ended ones.
    store
        .insert_web_session(&session(12, NOW + 120, 3600))
        .await
        .unwrap();
    assert!(
        store.web_session(&h(11)).await.unwrap().is_none(),
        "ended, swept"
    );
    assert!(store.delete_web_session(&h(10)).await.unwrap());
    assert!(!store.delete_web_session(&h(10)).await.unwrap());
    assert!(store.web_session(&h(10)).await.unwrap().is_none());
    assert!(
        store.web_session(&h(12)).await.unwrap().is_some(),
        "others untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sessions_on_sqlite() {
    let (store, _dir) = super::sqlite().await;
    suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_sessions_on_postgres() {
    let (store, schema) = super::postgres().await;
    suite(store).await;
    super::drop_schema(&schema).await;
}
