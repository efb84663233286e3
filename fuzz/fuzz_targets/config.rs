//! Any bytes as a config file: validation must refuse or accept, never panic, and
//! anything it accepts must be safe to run (bounded durations, valid ports).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = fproxy::Validator::default().parse(text) {
        for app in &config.apps {
            assert!(app.drain_timeout <= fproxy::config::limits::MAX_DURATION);
        }
    }
});
