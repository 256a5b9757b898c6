//! Static-header values (issue 17, trap 2) on both backends: the server's header
//! names, per-slot sealed values (shared and per user) that open only in the row,
//! slot, server and URL they were sealed for, key rotation, purge and cascade.

use std::collections::{BTreeMap, BTreeSet};

use latchkey_core::Secret;
use latchkey_vault::headers::{open_values, seal_values};
use latchkey_vault::rotate::{NoProgress, RotateOptions, rotate};
use latchkey_vault::store::new_id;
use latchkey_vault::{HeaderValuesRow, Keyring, KeyringError, Slot, StoreError};

use super::hostile_binding::{Db, K1, K2, ring};
use super::{NOW, credential, server, slot};

const URL: &str = "https://mcp.example/mcp";

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), Secret::new(*v)))
        .collect()
}

fn plain(v: &BTreeMap<String, Secret>) -> BTreeMap<String, String> {
    v.iter()
        .map(|(n, s)| (n.clone(), s.expose().to_owned()))
        .collect()
}

/// A row of `slot` holding `pairs`, sealed for `url` under `k`.
fn row(k: &Keyring, slot: &Slot, url: &str, pairs: &[(&str, &str)]) -> HeaderValuesRow {
    let id = new_id();
    let v = values(pairs);
    HeaderValuesRow {
        values: seal_values(k, &id, slot, url, &v).unwrap(),
        id,
        slot: slot.clone(),
        url: url.into(),
        names: v.keys().cloned().collect(),
        created_at: NOW,
        updated_at: NOW,
    }
}

/// The slot's stored values, opened.
async fn opened(db: &Db, k: &Keyring, s: &Slot) -> Result<BTreeMap<String, String>, KeyringError> {
    let r = db.store().get_header_values(s).await.unwrap().unwrap();
    open_values(k, &r).map(|v| plain(&v))
}

async fn count(db: &Db, sql: &str) -> i64 {
    let q = sqlx::AssertSqlSafe(sql.to_owned());
    match db {
        Db::Sqlite(s, _) => sqlx::query_scalar(q).fetch_one(s.pool()).await.unwrap(),
        Db::Pg(s, _) => sqlx::query_scalar(q).fetch_one(s.pool()).await.unwrap(),
    }
}

async fn names_and_slots_round_trip(db: Db) {
    let store = db.store();
    let k = ring(&format!("1:{K1}"));
    let mut s1 = server("t1", "s1");
    s1.header_names = vec!["X-Api-Key".into(), "authorization".into()];
    store.create_server(&s1, NOW).await.unwrap();
    store
        .create_server(&server("t1", "plain"), NOW)
        .await
        .unwrap();
    let got = store.get_server("t1", "s1").await.unwrap().unwrap();
    assert_eq!(got.header_names, ["X-Api-Key", "authorization"]);
    assert_eq!(got, s1);
    let plain_server = store.get_server("t1", "plain").await.unwrap().unwrap();
    assert!(plain_server.header_names.is_empty());
    s1.header_names = vec!["X-Team-Token".into()];
    assert!(store.update_server(&s1, NOW + 1).await.unwrap());
    let listed = store.list_servers("t1").await.unwrap();
    let listed = listed.iter().find(|s| s.id == "s1").unwrap();
    assert_eq!(listed.header_names, ["X-Team-Token"]);

    // Shared and per-user slots hold their own values.
    let shared = slot("t1", "s1", None);
    let alice = slot("t1", "s1", Some("alice"));
    let bob = slot("t1", "s1", Some("bob"));
    store
        .put_header_values(&row(&k, &shared, URL, &[("X-Team-Token", "team-secret")]))
        .await
        .unwrap();
    let a1 = row(
        &k,
        &alice,
        URL,
        &[("X-Team-Token", "alice-1"), ("X-Extra", "e\"\\\u{e9}")],
    );
    store.put_header_values(&a1).await.unwrap();
    assert_eq!(
        opened(&db, &k, &shared).await.unwrap(),
        BTreeMap::from([("X-Team-Token".into(), "team-secret".into())])
    );
    assert_eq!(
        opened(&db, &k, &alice).await.unwrap(),
        BTreeMap::from([
            ("X-Extra".into(), "e\"\\\u{e9}".into()),
            ("X-Team-Token".into(), "alice-1".into())
        ])
    );
    assert!(store.get_header_values(&bob).await.unwrap().is_none());
    // Scoped by tenant: the same server id in another tenant's slot is nothing.
    let other_tenant = slot("t2", "s1", Some("alice"));
    assert!(
        store
            .get_header_values(&other_tenant)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!store.delete_header_values(&other_tenant).await.unwrap());

    let stored = store.get_header_values(&alice).await.unwrap().unwrap();
    assert_eq!(stored, a1);
    assert_eq!(stored.names, ["X-Extra", "X-Team-Token"]);
    let debug = format!("{stored:?}");
    assert!(!debug.contains("alice-1"), "{debug}");
    assert!(!debug.contains("values"), "no envelope bytes: {debug}");
    // The plaintext is nowhere in the row.
    assert!(!stored.values.windows(7).any(|w| w == b"alice-1"));

    // A new write replaces the slot's row, under a new id.
    let a2 = row(&k, &alice, URL, &[("X-Team-Token", "alice-2")]);
    store.put_header_values(&a2).await.unwrap();
    let stored = store.get_header_values(&alice).await.unwrap().unwrap();
    assert_eq!(stored.id, a2.id);
    assert_ne!(stored.id, a1.id);
    assert_eq!(stored.names, ["X-Team-Token"]);
    assert_eq!(
        opened(&db, &k, &alice).await.unwrap()["X-Team-Token"],
        "alice-2"
    );
    let shared_again = row(&k, &shared, URL, &[("X-Team-Token", "team-2")]);
    store.put_header_values(&shared_again).await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM header_values").await, 2);

    // Listed per server, the shared slot first.
    store
        .put_header_values(&row(&k, &bob, URL, &[("X-Team-Token", "bob")]))
        .await
        .unwrap();
    let all = store.server_header_values("t1", "s1").await.unwrap();
    let subjects: Vec<Option<&str>> = all.iter().map(|r| r.slot.subject.as_deref()).collect();
    assert_eq!(subjects, [None, Some("alice"), Some("bob")]);
    assert!(
        store
            .server_header_values("t2", "s1")
            .await
            .unwrap()
            .is_empty()
    );

    // Values for a server that does not exist are refused by the database.
    let ghost = row(&k, &slot("t1", "ghost", None), URL, &[("X", "y")]);
    assert!(matches!(
        store.put_header_values(&ghost).await,
        Err(StoreError::Conflict(_))
    ));

    assert!(store.delete_header_values(&bob).await.unwrap());
    assert!(!store.delete_header_values(&bob).await.unwrap());
    assert!(store.get_header_values(&bob).await.unwrap().is_none());
    assert!(store.get_header_values(&alice).await.unwrap().is_some());
    db.drop().await;
}

async fn edited_or_moved_values_do_not_open(db: Db) {
    let store = db.store();
    let k = ring(&format!("1:{K1}"));
    for (t, s) in [("t1", "s1"), ("t1", "s3"), ("t2", "s2")] {
        store.create_server(&server(t, s), NOW).await.unwrap();
    }
    let alice = slot("t1", "s1", Some("alice"));
    let a = row(&k, &alice, URL, &[("X-Api-Key", "alice-key")]);
    store.put_header_values(&a).await.unwrap();
    let b = row(
        &k,
        &slot("t1", "s1", Some("bob")),
        URL,
        &[("X-Api-Key", "bob-key")],
    );
    store.put_header_values(&b).await.unwrap();
    assert_eq!(
        opened(&db, &k, &alice).await.unwrap()["X-Api-Key"],
        "alice-key"
    );
    let id = &a.id;

    // Another URL than the values were set for (an edited row, or a URL change the
    // purge has not reached): refused; restored, it opens again.
    db.exec(&format!(
        "UPDATE header_values SET url = 'https://evil.example/mcp' WHERE id = '{id}'"
    ))
    .await;
    assert_eq!(
        opened(&db, &k, &alice).await,
        Err(KeyringError::Undecryptable)
    );
    db.exec(&format!(
        "UPDATE header_values SET url = '{URL}' WHERE id = '{id}'"
    ))
    .await;
    assert!(opened(&db, &k, &alice).await.is_ok());

    // Bob's envelope copied into alice's row: bound to bob's row id and slot.
    db.exec(&format!(
        "UPDATE header_values SET sealed_values = (SELECT sealed_values FROM header_values WHERE id = '{}') WHERE id = '{id}'",
        b.id
    ))
    .await;
    assert_eq!(
        opened(&db, &k, &alice).await,
        Err(KeyringError::Undecryptable)
    );
    store.put_header_values(&a).await.unwrap();
    assert!(opened(&db, &k, &alice).await.is_ok());

    // Moved to another user's slot, the shared slot, another server, another tenant.
    db.exec(&format!("DELETE FROM header_values WHERE id = '{}'", b.id))
        .await;
    let moves: [(&str, Slot); 4] = [
        ("subject = 'mallory'", slot("t1", "s1", Some("mallory"))),
        ("subject = NULL", slot("t1", "s1", None)),
        ("server_id = 's3'", slot("t1", "s3", Some("alice"))),
        (
            "tenant_id = 't2', server_id = 's2'",
            slot("t2", "s2", Some("alice")),
        ),
    ];
    for (set, moved) in moves {
        db.exec(&format!("UPDATE header_values SET {set} WHERE id = '{id}'"))
            .await;
        assert_eq!(
            opened(&db, &k, &moved).await,
            Err(KeyringError::Undecryptable),
            "{set}"
        );
        db.exec(&format!(
            "UPDATE header_values SET tenant_id = 't1', server_id = 's1', subject = 'alice' WHERE id = '{id}'"
        ))
        .await;
        assert!(opened(&db, &k, &alice).await.is_ok(), "{set} undone");
    }
    db.drop().await;
}

async fn rotation_reseals_header_values(db: Db) {
    let store = db.store();
    let k1 = ring(&format!("1:{K1}"));
    store.create_server(&server("t1", "s1"), NOW).await.unwrap();
    let alice = slot("t1", "s1", Some("alice"));
    let shared = slot("t1", "s1", None);
    store
        .put_header_values(&row(&k1, &alice, URL, &[("X-Api-Key", "alice-key")]))
        .await
        .unwrap();
    store
        .put_header_values(&row(&k1, &shared, URL, &[("X-Api-Key", "shared-key")]))
        .await
        .unwrap();
    assert_eq!(store.key_ids_in_use().await.unwrap(), BTreeSet::from([1]));

    let k2 = ring(&format!("2:{K2},1:{K1}"));
    let report = rotate(
        store,
        &k2,
        RotateOptions {
            batch_size: 1,
            now: NOW,
        },
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(report.values_rewrapped, 2, "{report:?}");
    assert_eq!(report.undecryptable, 0);
    assert_eq!(store.key_ids_in_use().await.unwrap(), BTreeSet::from([2]));
    let only2 = ring(&format!("2:{K2}"));
    assert_eq!(
        opened(&db, &only2, &alice).await.unwrap()["X-Api-Key"],
        "alice-key"
    );
    assert_eq!(
        opened(&db, &only2, &shared).await.unwrap()["X-Api-Key"],
        "shared-key"
    );
    db.drop().await;
}

async fn purge_and_cascade(db: Db) {
    let store = db.store();
    let k = ring(&format!("1:{K1}"));
    store.create_server(&server("t1", "s1"), NOW).await.unwrap();
    store.create_server(&server("t1", "s2"), NOW).await.unwrap();
    for subject in [None, Some("alice")] {
        let s = slot("t1", "s1", subject);
        store
            .put_header_values(&row(&k, &s, URL, &[("X-Api-Key", "v")]))
            .await
            .unwrap();
    }
    let other = slot("t1", "s2", Some("alice"));
    store
        .put_header_values(&row(&k, &other, URL, &[("X-Api-Key", "v")]))
        .await
        .unwrap();
    let alice = slot("t1", "s1", Some("alice"));
    store
        .upsert_credential(&credential(&alice, b"rt"))
        .await
        .unwrap();

    // Another tenant's purge of the same server id removes nothing.
    assert_eq!(store.purge_server("t2", "s1").await.unwrap(), 0);
    // One credential and two header-value rows.
    assert_eq!(store.purge_server("t1", "s1").await.unwrap(), 3);
    assert!(
        store
            .server_header_values("t1", "s1")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_credential(&alice).await.unwrap().is_none());
    assert!(store.get_server("t1", "s1").await.unwrap().is_some());
    assert!(
        store.get_header_values(&other).await.unwrap().is_some(),
        "other server untouched"
    );

    // Deleting the server takes its values with it.
    assert!(store.delete_server("t1", "s2").await.unwrap());
    assert_eq!(count(&db, "SELECT COUNT(*) FROM header_values").await, 0);
    db.drop().await;
}

#[tokio::test]
async fn header_values_on_sqlite() {
    names_and_slots_round_trip(Db::sqlite().await).await;
    edited_or_moved_values_do_not_open(Db::sqlite().await).await;
    rotation_reseals_header_values(Db::sqlite().await).await;
    purge_and_cascade(Db::sqlite().await).await;
}

#[tokio::test]
async fn header_values_on_postgres() {
    names_and_slots_round_trip(Db::postgres().await).await;
    edited_or_moved_values_do_not_open(Db::postgres().await).await;
    rotation_reseals_header_values(Db::postgres().await).await;
    purge_and_cascade(Db::postgres().await).await;
}
