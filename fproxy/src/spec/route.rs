//! Routing a spec app's HTTP request path.
//!
//! Paths (empty segments are ignored, so `//v1/...` works too):
//! - `/{v1|v2}/download_config_specs[/{key}[.json|.js]]`
//! - `/v1/health`, `/v1/ready`, `/v1/startup`
//!
//! The path is taken as sent (percent-escapes are not decoded): a key with `%` in it
//! is not a key.

use super::key::{KeyError, SdkKey};
use super::store::Api;

/// Where a path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Startup,
    /// `download_config_specs`; `key` is the key from the path, if it has one
    /// (a key in the `statsig-api-key` header takes precedence).
    Dcs {
        api: Api,
        key: Option<Result<SdkKey, KeyError>>,
    },
    NotFound,
}

impl Route {
    /// Routes `path` (the URI's path, without the query). Never panics.
    pub fn parse(path: &str) -> Route {
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let first = segments.next();
        let second = segments.next();
        let third = segments.next();
        if segments.next().is_some() {
            return Route::NotFound;
        }
        match (first, second, third) {
            (Some("v1"), Some("health"), None) => Route::Health,
            (Some("v1"), Some("ready"), None) => Route::Ready,
            (Some("v1"), Some("startup"), None) => Route::Startup,
            (Some(v), Some("download_config_specs"), file) => {
                let api = match v {
                    "v1" => Api::V1,
                    "v2" => Api::V2,
                    _ => return Route::NotFound,
                };
                let key = file.map(|f| {
                    let k = f
                        .strip_suffix(".json")
                        .or_else(|| f.strip_suffix(".js"))
                        .unwrap_or(f);
                    SdkKey::parse(k)
                });
                Route::Dcs { api, key }
            }
            _ => Route::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::key::encode;
    use proptest::prelude::*;

    fn key(path: &str) -> Option<Result<String, KeyError>> {
        match Route::parse(path) {
            Route::Dcs { key, .. } => key.map(|k| k.map(|k| k.as_str().to_string())),
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v1/health"), Route::Health);
        assert_eq!(Route::parse("//v1//ready/"), Route::Ready);
        assert_eq!(Route::parse("/v1/startup"), Route::Startup);
        assert_eq!(Route::parse("/v3/download_config_specs/k"), Route::NotFound);
        assert_eq!(Route::parse("/v1/health/x"), Route::NotFound);
        assert_eq!(
            Route::parse("/v1/download_config_specs/a/b.json"),
            Route::NotFound
        );
        assert_eq!(Route::parse(""), Route::NotFound);
        assert_eq!(key("/v1/download_config_specs"), None);
        for p in [
            "/v2/download_config_specs/secret-k.json",
            "/v1/download_config_specs/secret-k.js",
            "//v1/download_config_specs/secret-k",
        ] {
            assert_eq!(key(p), Some(Ok("secret-k".into())), "{p}");
        }
        for p in [
            "/v1/download_config_specs/%2e%2e.json",
            "/v1/download_config_specs/..%2f..%2fadmin.json",
            "/v1/download_config_specs/..\\..\\x.json",
            "/v1/download_config_specs/...json",
        ] {
            assert!(matches!(key(p), Some(Err(_))), "{p}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// No panic on any path; a key accepted from a path holds no forbidden
        /// character and is its own percent-encoding.
        #[test]
        fn any_path(p in any::<String>()) {
            check(&p)?;
        }

        #[test]
        fn dcs_like_paths(p in "/{0,2}v[12]/download_config_specs/[a-z0-9./\\\\?#%~_ -]{0,30}(\\.json|\\.js)?") {
            check(&p)?;
        }
    }

    fn check(p: &str) -> Result<(), TestCaseError> {
        if let Route::Dcs {
            key: Some(Ok(k)), ..
        } = Route::parse(p)
        {
            let k = k.as_str();
            prop_assert!(!k.contains(['/', '\\', '?', '#', '%']));
            prop_assert!(!k.chars().any(|c| c.is_whitespace() || c.is_control()));
            prop_assert_eq!(encode(k), k);
            prop_assert!(p.contains(k));
        }
        Ok(())
    }
}
