//! Fetching specs from upstream (the Statsig CDN, or anything speaking its API).

use std::time::Duration;

use bytes::Bytes;

use super::store::{Key, Spec};

/// What one fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// A payload (possibly not newer than what we have; the store decides).
    Spec(Spec),
    /// `{"has_updates": false}`: nothing new since `sinceTime`.
    Unchanged,
    /// 401 or 403: upstream does not accept this SDK key.
    Unauthorized(u16),
}

/// Why a fetch failed. Every failure is safe to retry.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request to upstream failed: {0}")]
    Transport(String),
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    #[error("upstream payload rejected: {0}")]
    Payload(String),
    #[error("upstream response larger than max_spec_size ({0} bytes)")]
    TooLarge(usize),
}

/// An HTTP client for one upstream base URL.
#[derive(Debug, Clone)]
pub struct Upstream {
    base: String,
    client: reqwest::Client,
}

impl Upstream {
    pub fn new(base: &str, timeout: Duration) -> Result<Upstream, FetchError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("fproxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        Ok(Upstream {
            base: base.to_string(),
            client,
        })
    }

    /// `GET {base}/{v}/download_config_specs/{key}.json[?sinceTime=lcut]`, reading
    /// at most `max_size` bytes of body.
    pub async fn fetch(
        &self,
        key: &Key,
        since: Option<u64>,
        max_size: usize,
    ) -> Result<Fetched, FetchError> {
        // The key is checked to be one plain segment; encoding it anyway keeps the
        // URL right should that check ever loosen.
        let mut url = format!(
            "{}/{}/download_config_specs/{}.json",
            self.base,
            key.api.path(),
            super::key::encode(key.sdk_key.as_str())
        );
        if let Some(since) = since {
            url.push_str(&format!("?sinceTime={since}"));
        }
        let req = self
            .client
            .get(&url)
            .header("statsig-api-key", key.sdk_key.as_str());
        // The error text of reqwest carries the URL, which holds the key: keep only
        // the kind of failure.
        let mut resp = req
            .send()
            .await
            .map_err(|e| FetchError::Transport(describe(&e)))?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => {}
            401 | 403 => return Ok(Fetched::Unauthorized(status)),
            s => return Err(FetchError::Status(s)),
        }
        let header_lcut = resp
            .headers()
            .get("x-since-time")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Counted chunk by chunk (after gzip decoding), so an endless or huge body
        // is cut off at the cap instead of being held whole.
        if resp.content_length().is_some_and(|n| n > max_size as u64) {
            return Err(FetchError::TooLarge(max_size));
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Transport(describe(&e)))?
        {
            if body.len() + chunk.len() > max_size {
                return Err(FetchError::TooLarge(max_size));
            }
            body.extend_from_slice(&chunk);
        }
        parse(body.freeze(), header_lcut)
    }
}

/// Validates a payload: it must be a JSON object; `has_updates: false` means
/// unchanged; otherwise its lcut comes from `x-since-time`, else from `time`.
pub fn parse(body: Bytes, header_lcut: Option<u64>) -> Result<Fetched, FetchError> {
    #[derive(serde::Deserialize)]
    struct Head {
        has_updates: Option<bool>,
        time: Option<u64>,
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| FetchError::Payload(format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(FetchError::Payload("not a JSON object".into()));
    }
    let head: Head = serde_json::from_value(value)
        .map_err(|e| FetchError::Payload(format!("bad `time` or `has_updates`: {e}")))?;
    if head.has_updates == Some(false) {
        return Ok(Fetched::Unchanged);
    }
    match header_lcut.or(head.time) {
        Some(lcut) if lcut > 0 => Ok(Fetched::Spec(Spec::new(lcut, body))),
        _ => Err(FetchError::Payload(
            "no update time (`x-since-time` header or `time` field)".into(),
        )),
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request error"
    };
    match std::error::Error::source(e) {
        Some(src) => format!("{kind}: {src}"),
        None => kind.to_string(),
    }
}

/// rustls needs one process-wide crypto provider; ring builds without a C toolchain
/// beyond `cc`. Installing twice is harmless (the second attempt is refused).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_rules() {
        let ok = parse(
            Bytes::from_static(br#"{"time":5,"feature_gates":[]}"#),
            None,
        )
        .unwrap();
        assert!(matches!(ok, Fetched::Spec(ref s) if s.lcut == 5));
        let hdr = parse(Bytes::from_static(br#"{"time":5}"#), Some(9)).unwrap();
        assert!(matches!(hdr, Fetched::Spec(ref s) if s.lcut == 9));
        assert!(matches!(
            parse(Bytes::from_static(br#"{"has_updates":false}"#), None).unwrap(),
            Fetched::Unchanged
        ));
        for bad in [
            &b"[1,2]"[..],
            b"nope",
            br#"{"feature_gates":[]}"#,
            br#"{"time":0}"#,
        ] {
            assert!(parse(Bytes::copy_from_slice(bad), None).is_err(), "{bad:?}");
        }
    }
}
