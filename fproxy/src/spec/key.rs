//! SDK keys: the one check every key passes, wherever it comes from.
//!
//! A key reaches the app in an HTTP path (`/v1/download_config_specs/<key>.json`), in
//! the `statsig-api-key` header, in a gRPC request, in `warm_keys`, and from the
//! Redis registry other instances write. It then travels into an upstream URL, an
//! upstream header, Redis key names and logs (masked). Upstream treats it as one
//! opaque path segment, so a key that could be anything else (`../`, `?`, `#`, `\`,
//! `%2e%2e`) would let a client make fproxy fetch, cache and serve any path of the
//! upstream host. Real keys (`secret-…`, `client-…`, `console-…`) are letters,
//! digits and dashes; this allows exactly the characters RFC 3986 never encodes in
//! a path segment (letters, digits, `-`, `.`, `_`, `~`), so a key is its own
//! percent-encoding. The URL is built with [`encode`] all the same.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// The longest key accepted. Real keys are about 50 characters.
pub const MAX_LEN: usize = 256;

/// What [`encode`] escapes: everything but RFC 3986 unreserved characters.
pub const ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a string is not an SDK key. The messages never repeat the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("an SDK key must not be empty")]
    Empty,
    #[error("an SDK key must be at most {MAX_LEN} characters")]
    TooLong,
    #[error("an SDK key must be made of letters, digits, `-`, `.`, `_` and `~` only")]
    BadCharacter,
    #[error("an SDK key must not be only dots")]
    Dots,
}

/// A string that passed [`SdkKey::parse`]: safe as a URL path segment, a header
/// value and a Redis key part. Its `Debug` shows it masked; [`SdkKey::as_str`]
/// gives the secret to the few places that must send it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SdkKey(String);

impl SdkKey {
    /// Checks `s` and keeps it. Never panics, for any input.
    pub fn parse(s: &str) -> Result<SdkKey, KeyError> {
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(KeyError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(KeyError::BadCharacter);
        }
        // `.` and `..` are path steps, not segments; keep anything like them out.
        if s.bytes().all(|b| b == b'.') {
            return Err(KeyError::Dots);
        }
        Ok(SdkKey(s.to_string()))
    }

    /// The whole secret: for upstream requests and Redis keys only, never logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Shortened for logs, metrics and status.
    pub fn masked(&self) -> String {
        super::store::mask(&self.0)
    }
}

impl std::fmt::Debug for SdkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SdkKey({})", self.masked())
    }
}

impl PartialEq<&str> for SdkKey {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::str::FromStr for SdkKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<SdkKey, KeyError> {
        SdkKey::parse(s)
    }
}

/// `s` percent-encoded as one URL path segment (a valid key comes out unchanged).
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ENCODE_SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn real_keys_pass_and_hostile_ones_do_not() {
        for ok in [
            "secret-3hSEKxXyz0123456789abcdefghijklmnopqrstu",
            "client-abc",
            "console-x_y.z~1",
            "a",
            "..a",
        ] {
            assert_eq!(SdkKey::parse(ok).map(|k| k.0), Ok(ok.to_string()), "{ok}");
        }
        let long = "k".repeat(MAX_LEN + 1);
        for (bad, why) in [
            ("", KeyError::Empty),
            (long.as_str(), KeyError::TooLong),
            ("..", KeyError::Dots),
            (".", KeyError::Dots),
            ("a/b", KeyError::BadCharacter),
            ("..\\..\\admin", KeyError::BadCharacter),
            ("k?x=1", KeyError::BadCharacter),
            ("k#frag", KeyError::BadCharacter),
            ("%2e%2e", KeyError::BadCharacter),
            ("sec ret", KeyError::BadCharacter),
            ("sec\tret", KeyError::BadCharacter),
            ("k\u{0}", KeyError::BadCharacter),
            ("k\r\nx: y", KeyError::BadCharacter),
            ("clé", KeyError::BadCharacter),
            ("a|b", KeyError::BadCharacter),
        ] {
            assert_eq!(SdkKey::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(SdkKey::parse(&"k".repeat(MAX_LEN)).map(|_| ()), Ok(()));
    }

    #[test]
    fn debug_masks_the_secret() {
        let k = SdkKey::parse("secret-0123456789abcdefghij").unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("0123456789abcdefghij"), "{shown}");
        assert_eq!(encode("a/b?c#d%e\\f g"), "a%2Fb%3Fc%23d%25e%5Cf%20g");
    }

    const FORBIDDEN: &[char] = &['/', '\\', '?', '#', '%', ' ', '\t', '\r', '\n', '\0', '|'];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the input: no panic, and an accepted key holds no forbidden
        /// character and is its own percent-encoding.
        #[test]
        fn parse_never_accepts_anything_unsafe(s in any::<String>()) {
            if let Ok(k) = SdkKey::parse(&s) {
                prop_assert!(!k.as_str().contains(FORBIDDEN));
                prop_assert!(!k.as_str().chars().any(|c| c.is_control() || c.is_whitespace()));
                prop_assert_eq!(encode(k.as_str()), k.as_str());
                prop_assert!(k.as_str().len() <= MAX_LEN);
            }
        }

        /// Strings made of URL-ish characters, so accepted keys are common too.
        #[test]
        fn parse_on_url_like_strings(s in "[a-zA-Z0-9./\\\\?#%~_ -]{0,40}") {
            match SdkKey::parse(&s) {
                Ok(k) => {
                    prop_assert_eq!(k.as_str(), s.as_str());
                    prop_assert_eq!(encode(&s), s.as_str());
                }
                Err(_) => prop_assert!(
                    s.is_empty() || s.contains(FORBIDDEN) || s.bytes().all(|b| b == b'.')
                ),
            }
        }
    }
}
