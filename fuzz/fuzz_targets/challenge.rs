#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let all = latchkey_oauth::challenge::parse(data);
    for c in &all {
        // every parameter name is lower-cased and looked up consistently
        for (k, v) in &c.params {
            assert_eq!(c.param(k), Some(v.as_str()));
        }
    }
    let _ = latchkey_oauth::challenge::bearer_challenge([data]);
});
