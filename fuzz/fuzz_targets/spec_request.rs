//! Any bytes as a spec request path or SDK key: routing and key parsing must never
//! panic, and a key they accept must be one opaque URL path segment (it
//! percent-encodes to itself, so it cannot steer the upstream request).
#![no_main]

use fproxy::spec::key::{encode, SdkKey};
use fproxy::spec::route::Route;
use libfuzzer_sys::fuzz_target;

fn check(key: &SdkKey) {
    let k = key.as_str();
    assert_eq!(encode(k), k, "an accepted key must need no escaping");
    assert!(!k.contains(['/', '\\', '?', '#', '%']));
    assert!(!k.chars().all(|c| c == '.'), "`.` and `..` are path steps");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = SdkKey::parse(text) {
        check(&key);
    }
    if let Route::Dcs { key: Some(Ok(key)), .. } = Route::parse(text) {
        check(&key);
    }
});
