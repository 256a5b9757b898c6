//! Envelope encrypt/decrypt throughput. `cargo bench -p latchkey-vault --bench keyring`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use latchkey_vault::keyring::StaticKeys;
use latchkey_vault::{Aad, KeySet, Keyring};

fn envelopes(c: &mut Criterion) {
    let k = Keyring::new(StaticKeys(Some(
        KeySet::parse("1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap(),
    )));
    let aad = Aad {
        table: "credentials",
        column: "refresh_token",
        row: "0191f3a2-7c1e-7d55-9f1c-3a1b2c3d4e5f",
        binding: latchkey_vault::Binding {
            tenant: Some("default"),
            server: Some("0191f3a2-7c1e-7d55-9f1c-3a1b2c3d4e60"),
            subject: Some("alice"),
            issuer: Some("https://as.example"),
            resource: Some("https://mcp.example/mcp"),
            token_endpoint: Some("https://as.example/token"),
            revocation_endpoint: None,
        },
    };
    let mut g = c.benchmark_group("envelope");
    for size in [64usize, 1024] {
        let plain = vec![b'x'; size];
        let env = k.encrypt(&plain, aad).unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encrypt_{size}B"), |b| {
            b.iter(|| k.encrypt(black_box(&plain), aad).unwrap())
        });
        g.bench_function(format!("decrypt_{size}B"), |b| {
            b.iter(|| k.decrypt(black_box(&env), aad).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, envelopes);
criterion_main!(benches);
