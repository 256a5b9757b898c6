#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = latchkey_oauth::prm::ProtectedResourceMetadata::parse(data) {
        let _ = latchkey_oauth::prm::resource_matches(&p.resource, "https://mcp.example.com/mcp");
        let _ = latchkey_oauth::prm::candidates(&p.resource, None);
    }
    if let Ok(m) = latchkey_oauth::as_metadata::AuthorizationServerMetadata::parse(data) {
        let _ = latchkey_oauth::as_metadata::candidates(&m.issuer);
        let _ = m.supports_s256();
    }
});
