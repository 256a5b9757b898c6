#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = latchkey_oauth::grants::parse_token_response(data) {
        assert!(!t.access_token.is_empty());
    }
    let _ = latchkey_oauth::grants::parse_error(400, data);
    let _ = latchkey_oauth::registration::parse_registration(
        "https://as.example",
        data,
        latchkey_oauth::client_auth::AuthMethod::None,
    );
});
