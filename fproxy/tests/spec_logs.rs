//! Log lines clients can trigger in the spec app are rate-limited. A binary of its
//! own: it installs the process-wide tracing subscriber that captures the lines.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::upstream::*;
use common::*;

/// Every formatted log line, in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hundreds of unknown keys (each rejected by upstream) log one WARN line a
/// second, not one per key; the line says how many were left out.
#[tokio::test]
async fn unknown_keys_do_not_flood_the_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (up, _seen) = Upstream::start().await;
    // A budget that lets every key through: the log limit alone is under test.
    let p = Proxy::start(&spec_app(
        &up.url(),
        r#","new_key_fetches_per_second":100000"#,
    ))
    .await;
    let c = client();
    let started = Instant::now();
    let n = 300;
    let gets: Vec<_> = (0..n)
        .map(|i| {
            c.get(dcs(
                &p,
                &format!("/v1/download_config_specs/secret-nobody-{i}.json"),
            ))
            .send()
        })
        .collect();
    for g in gets {
        let r = within("response", g).await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let elapsed = started.elapsed().as_secs() as usize;
    assert_eq!(
        up.state.lock().unwrap().requests.len(),
        n,
        "keys not fetched"
    );
    p.stop().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("upstream rejects this SDK key"))
        .collect();
    assert!(!lines.is_empty(), "nothing captured: {text}");
    assert!(
        lines.len() <= elapsed + 2,
        "{} WARN lines for {n} keys in {elapsed}s",
        lines.len()
    );
    assert!(lines.iter().all(|l| l.contains("WARN")));
    assert!(!text.contains("secret-nobody-1"), "a key logged whole");
}
