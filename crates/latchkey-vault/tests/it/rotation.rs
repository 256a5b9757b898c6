//! `keys rotate` on both backends: everything re-encrypted to the current key, nothing
//! lost, resumable after an interruption, safe beside concurrent write-backs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::rotate::{
    Checkpoint, NoProgress, Rewrap, RotateOptions, RotationProgress, SealedTable, rotate,
};
use latchkey_vault::store::RegisteredClientRow;
use latchkey_vault::{Aad, KeySet, Keyring, Store, WriteBack};

use super::{NOW, credential, drop_schema, flow, postgres, server, slot, sqlite};

const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f";

fn ring(spec: &str) -> Keyring {
    Keyring::new(StaticKeys(Some(KeySet::parse(spec).unwrap())))
}

fn seal(k: &Keyring, aad: Aad<'_>, v: &str) -> Vec<u8> {
    k.encrypt(v.as_bytes(), aad).unwrap()
}

fn open(k: &Keyring, aad: Aad<'_>, env: &[u8]) -> String {
    let plain = k.decrypt(env, aad).unwrap();
    String::from_utf8(plain.to_vec()).unwrap()
}

const CRED: SealedTable = SealedTable::Credentials;

/// `n` per-user credentials on server `s1` of tenant `t1`, sealed under `k`, with
/// plaintexts derived from the subject; every third has no client secret (NULL).
async fn seed(store: &dyn Store, k: &Keyring, n: usize) -> Vec<String> {
    store.create_server(&server("t1", "s1"), NOW).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let user = format!("u{i:05}");
        let mut c = credential(&slot("t1", "s1", Some(&user)), b"");
        c.client_secret = (i % 3 != 0).then(|| seal(k, c.aad("client_secret"), "cs"));
        c.access_token = Some(seal(k, c.aad("access_token"), &format!("at-{user}")));
        c.refresh_token = Some(seal(k, c.aad("refresh_token"), &format!("rt-{user}")));
        store.upsert_credential(&c).await.unwrap();
        ids.push(c.id);
    }
    ids
}

/// Every sealed credential value opens with key 2 alone, to the seeded plaintext.
async fn assert_all_under_key_2(store: &dyn Store, n: usize) {
    let only2 = ring(&format!("2:{K2}"));
    for i in 0..n {
        let user = format!("u{i:05}");
        let row = store
            .get_credential(&slot("t1", "s1", Some(&user)))
            .await
            .unwrap()
            .unwrap();
        let rt = row.refresh_token.as_deref().unwrap();
        assert_eq!(rt[0], 2, "key id byte");
        assert!(open(&only2, row.aad("refresh_token"), rt).starts_with("rt-"));
        assert_eq!(row.generation, 0, "a rotation never bumps the generation");
        if let Some(cs) = row.client_secret.as_deref() {
            assert_eq!(open(&only2, row.aad("client_secret"), cs), "cs");
        }
    }
}

fn opts(batch: u32) -> RotateOptions {
    RotateOptions {
        batch_size: batch,
        now: NOW,
    }
}

async fn rotates_everything_and_keeps_what_it_cannot_open(store: Arc<dyn Store>) {
    let k1 = ring(&format!("1:{K1}"));
    let ids = seed(store.as_ref(), &k1, 25).await;
    // A registered client and a pending flow are sealed too.
    let mut rc = RegisteredClientRow {
        id: latchkey_vault::store::new_id(),
        tenant: "t1".into(),
        server: "s1".into(),
        issuer: "https://as.example".into(),
        client_id: "c".into(),
        client_secret: None,
        auth_method: "client_secret_basic".into(),
        client_secret_expires_at: None,
        obtained_by: "dcr".into(),
        created_at: NOW,
    };
    rc.client_secret = Some(seal(&k1, rc.secret_aad(), "dcr-secret"));
    store.put_registered_client(&rc).await.unwrap();
    let mut f = flow(&slot("t1", "s1", Some("u00000")), "ab12", NOW);
    f.verifier = seal(&k1, f.verifier_aad(), "verifier-1");
    store.insert_flow(&f).await.unwrap();
    // One corrupt value under key 1: it must survive untouched.
    let read = store.sealed_row(CRED, &ids[4]).await.unwrap().unwrap();
    let broken = read.values;
    let mut corrupt = broken[1].clone().unwrap();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let mut new = broken.clone();
    new[1] = Some(corrupt.clone());
    let cp = Checkpoint {
        target_key: 1,
        last_row: None,
        done: false,
        updated_at: NOW,
    };
    let conflicts = store
        .rewrap(
            CRED,
            &[Rewrap {
                key: ids[4].clone(),
                position: read.position,
                old: broken,
                new,
            }],
            &cp,
        )
        .await
        .unwrap();
    assert!(conflicts.is_empty());
    store.clear_rotation_checkpoints().await.unwrap();
    // The server's pre-registered client secret is sealed too.
    let mut srv = store.get_server("t1", "s1").await.unwrap().unwrap();
    srv.client_secret = Some(seal(&k1, srv.secret_aad(), "pre-secret"));
    assert!(store.update_server(&srv, NOW).await.unwrap());

    let k2 = ring(&format!("2:{K2},1:{K1}"));
    let report = rotate(store.as_ref(), &k2, opts(4), &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.target_key, 2);
    assert!(!report.resumed);
    assert_eq!(report.rows_scanned, 25 + 1 + 1 + 1);
    assert_eq!(report.rows_rewrapped, 28);
    // 25 access + 25 refresh + 16 client secrets + 1 DCR secret + 1 verifier + 1 server
    // secret, less the corrupt one.
    assert_eq!(report.values_rewrapped, 25 + 25 + 16 + 1 + 1 + 1 - 1);
    let srv = store.get_server("t1", "s1").await.unwrap().unwrap();
    assert_eq!(
        open(
            &ring(&format!("2:{K2}")),
            srv.secret_aad(),
            srv.client_secret.as_deref().unwrap()
        ),
        "pre-secret"
    );
    assert_eq!(report.undecryptable, 1);
    assert_eq!(report.concurrent_changes, 0);

    let only2 = ring(&format!("2:{K2}"));
    let row4 = store.sealed_row(CRED, &ids[4]).await.unwrap().unwrap();
    assert_eq!(
        row4.values[1].as_deref(),
        Some(&corrupt[..]),
        "the undecryptable value is left byte for byte"
    );
    let c = store
        .get_registered_client("t1", "s1", "https://as.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        open(&only2, c.secret_aad(), c.client_secret.as_deref().unwrap()),
        "dcr-secret"
    );
    let f = store.consume_flow("ab12").await.unwrap().unwrap();
    assert_eq!(open(&only2, f.verifier_aad(), &f.verifier), "verifier-1");
    // Everything else opens with key 2 alone (skip the corrupt row's access token).
    for (i, id) in ids.iter().enumerate() {
        let row = store.sealed_row(CRED, id).await.unwrap().unwrap();
        assert_eq!(
            open(
                &only2,
                row.aad(CRED, "refresh_token"),
                row.values[2].as_deref().unwrap()
            ),
            format!("rt-u{i:05}")
        );
    }
    assert!(store.rotation_checkpoint(CRED).await.unwrap().is_none());

    // A second run finds nothing to do.
    let again = rotate(store.as_ref(), &k2, opts(4), &NoProgress)
        .await
        .unwrap();
    assert_eq!(again.rows_rewrapped, 0);
    assert_eq!(again.undecryptable, 1);
}

/// Stops the rotation (drops its future) once `after` rows were reported done.
struct StopAfter {
    rows: AtomicU64,
    after: u64,
    stop: tokio::sync::Notify,
}

impl RotationProgress for StopAfter {
    fn table_started(&self, _: SealedTable, _: u64, _: u64) {}
    fn advanced(&self, rows: u64) {
        if self.rows.fetch_add(rows, Ordering::SeqCst) + rows >= self.after {
            self.stop.notify_one();
        }
    }
    fn table_finished(&self, _: SealedTable) {}
}

async fn resumes_after_an_interruption(store: Arc<dyn Store>) {
    let k1 = ring(&format!("1:{K1}"));
    seed(store.as_ref(), &k1, 40).await;
    let k2 = ring(&format!("2:{K2},1:{K1}"));
    let stopper = StopAfter {
        rows: AtomicU64::new(0),
        after: 10,
        stop: tokio::sync::Notify::new(),
    };
    tokio::select! {
        r = rotate(store.as_ref(), &k2, opts(5), &stopper) => panic!("finished early: {r:?}"),
        () = stopper.stop.notified() => {}
    }
    // Let whatever the dropped run had already sent settle (a COMMIT in flight lands,
    // an open transaction is rolled back), as it would for a killed process.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let cp = store.rotation_checkpoint(CRED).await.unwrap().unwrap();
    assert_eq!(cp.target_key, 2);
    assert!(!cp.done);
    let first = store
        .count_rows(CRED, cp.last_row.as_deref())
        .await
        .unwrap();
    assert!((10..40).contains(&first), "stopped part-way: {first}");

    let report = rotate(store.as_ref(), &k2, opts(5), &NoProgress)
        .await
        .unwrap();
    assert!(report.resumed);
    // The rest of the credentials, and the server row (the next table).
    assert_eq!(
        report.rows_scanned,
        40 - first + 1,
        "the resumed run starts after the checkpoint: {report:?}"
    );
    assert_eq!(
        report.rows_rewrapped,
        40 - first,
        "nothing done twice, nothing skipped"
    );
    assert_all_under_key_2(store.as_ref(), 40).await;

    // A checkpoint for another target key is not resumed.
    store
        .rewrap(
            CRED,
            &[],
            &Checkpoint {
                target_key: 9,
                last_row: Some("zzzz".into()),
                done: false,
                updated_at: NOW,
            },
        )
        .await
        .unwrap();
    let fresh = rotate(store.as_ref(), &k2, opts(5), &NoProgress)
        .await
        .unwrap();
    assert!(!fresh.resumed);
    assert_eq!(fresh.rows_scanned, 40 + 1);
}

async fn never_overwrites_a_concurrent_write(store: Arc<dyn Store>) {
    let k1 = ring(&format!("1:{K1}"));
    let ids = seed(store.as_ref(), &k1, 200).await;
    let k2 = Arc::new(ring(&format!("2:{K2},1:{K1}")));

    // A stale rewrap loses to a write-back that landed after the read.
    let read = store.sealed_row(CRED, &ids[0]).await.unwrap().unwrap();
    let fresh_at = seal(&k2, read.aad(CRED, "access_token"), "at-fresh");
    assert!(
        store
            .write_back(&WriteBack {
                tenant: "t1".into(),
                id: ids[0].clone(),
                generation: 0,
                access_token: fresh_at.clone(),
                access_expires_at: Some(NOW + 60),
                refresh_token: None,
                now: NOW,
            })
            .await
            .unwrap()
    );
    let mut new = read.values.clone();
    new[1] = Some(b"stale".to_vec());
    let cp = Checkpoint {
        target_key: 2,
        last_row: None,
        done: false,
        updated_at: NOW,
    };
    let lost = store
        .rewrap(
            CRED,
            &[Rewrap {
                key: ids[0].clone(),
                position: read.position,
                old: read.values,
                new,
            }],
            &cp,
        )
        .await
        .unwrap();
    assert_eq!(lost, vec![ids[0].clone()]);
    let row = store.sealed_row(CRED, &ids[0]).await.unwrap().unwrap();
    assert_eq!(row.values[1].as_deref(), Some(&fresh_at[..]));
    store.clear_rotation_checkpoints().await.unwrap();

    // Write-backs racing a whole rotation: every one succeeds (the rotation leaves the
    // generation alone), none is overwritten, and everything ends under key 2.
    let writer = {
        let store = store.clone();
        let k2 = k2.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            for round in 0..3 {
                for id in ids.iter().skip(1).step_by(7) {
                    let row = store.sealed_row(CRED, id).await.unwrap().unwrap();
                    let at = seal(&k2, row.aad(CRED, "access_token"), &format!("at-w{round}"));
                    let rt = seal(&k2, row.aad(CRED, "refresh_token"), &format!("rt-w{round}"));
                    let w = WriteBack {
                        tenant: "t1".into(),
                        id: id.clone(),
                        generation: round,
                        access_token: at,
                        access_expires_at: Some(NOW + 60),
                        refresh_token: Some(rt),
                        now: NOW,
                    };
                    ok += u32::from(store.write_back(&w).await.unwrap());
                    tokio::task::yield_now().await;
                }
            }
            ok
        })
    };
    let report = rotate(store.as_ref(), &k2, opts(10), &NoProgress)
        .await
        .unwrap();
    let ok = writer.await.unwrap();
    let written: Vec<&String> = ids.iter().skip(1).step_by(7).collect();
    assert_eq!(ok as usize, written.len() * 3, "no write-back lost its CAS");
    assert_eq!(report.undecryptable, 0);
    let only2 = ring(&format!("2:{K2}"));
    for id in &ids {
        let row = store.sealed_row(CRED, id).await.unwrap().unwrap();
        let rt = open(
            &only2,
            row.aad(CRED, "refresh_token"),
            row.values[2].as_deref().unwrap(),
        );
        if written.contains(&id) {
            assert_eq!(rt, "rt-w2", "the last write-back wins");
        } else {
            assert!(rt.starts_with("rt-u"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_sqlite() {
    for case in 0..3 {
        let (store, _dir) = sqlite().await;
        match case {
            0 => rotates_everything_and_keeps_what_it_cannot_open(store).await,
            1 => resumes_after_an_interruption(store).await,
            _ => never_overwrites_a_concurrent_write(store).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_postgres() {
    for case in 0..3 {
        let (store, schema) = postgres().await;
        match case {
            0 => rotates_everything_and_keeps_what_it_cannot_open(store).await,
            1 => resumes_after_an_interruption(store).await,
            _ => never_overwrites_a_concurrent_write(store).await,
        }
        drop_schema(&schema).await;
    }
}

#[tokio::test]
async fn rotation_without_a_key_is_the_typed_error() {
    let (store, _dir) = sqlite().await;
    let none = Keyring::new(StaticKeys(None));
    let err = rotate(store.as_ref(), &none, opts(10), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            latchkey_vault::rotate::RotateError::Keyring(
                latchkey_vault::KeyringError::EncryptionKeyMissing
            )
        ),
        "{err:?}"
    );
}
