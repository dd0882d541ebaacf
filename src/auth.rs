//! API keys.
//!
//! The gateway knows keys only by their SHA-256, so a leaked config file leaks no key. A presented
//! key is hashed and compared with every configured hash in constant time, without stopping at a
//! match, so response timing reveals neither which key matched nor how much of a hash agreed.
//! With no client keys configured the gateway is open (and says so at start).

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AdminKeyConfig, Config, KeyConfig};
use crate::error::Error;

/// The caller a request was authenticated as, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Arc<KeyConfig>>);

impl Caller {
    /// The key's name, for limits, logs and metrics (never the key).
    pub fn name(&self) -> Option<&str> {
        self.0.as_ref().map(|k| k.name.as_str())
    }

    /// Whether this caller may pin a request to a target (`x-sluice-target`): a key with
    /// `pin_target = true`, or anyone on an open gateway, which has no keys to tell callers apart.
    pub fn may_pin(&self) -> bool {
        self.0.as_ref().is_none_or(|k| k.pin_target)
    }

    /// Whether this caller may use `model`.
    pub fn may_use(&self, model: &str) -> bool {
        match &self.0 {
            None => true,
            Some(k) => k.models.as_ref().is_none_or(|m| m.contains(model)),
        }
    }
}

/// Client and admin keys.
#[derive(Debug, Default)]
pub struct KeyRing {
    clients: Vec<Arc<KeyConfig>>,
    admins: Vec<AdminKeyConfig>,
}

/// The key presented as `Authorization: Bearer <key>`, if any.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at(v.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
        .filter(|k| !k.is_empty())
}

fn find<'a, T>(items: &'a [T], hash: &[u8; 32], of: impl Fn(&T) -> &[u8; 32]) -> Option<&'a T> {
    let mut found = None;
    for item in items {
        if bool::from(of(item).ct_eq(hash)) {
            found = Some(item);
        }
    }
    found
}

// === impl KeyRing ===

impl KeyRing {
    /// The keys of `config`.
    pub fn new(config: &Config) -> Self {
        KeyRing {
            clients: config.keys.iter().cloned().map(Arc::new).collect(),
            admins: config.admin_keys.clone(),
        }
    }

    /// Whether client keys are required.
    pub fn is_open(&self) -> bool {
        self.clients.is_empty()
    }

    /// The caller of an API request: anonymous when the gateway is open, a known key otherwise.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        if self.is_open() {
            return Ok(Caller(None));
        }
        let key = bearer(headers).ok_or(Error::Unauthorized(
            "Missing API key: send `Authorization: Bearer <key>`.",
        ))?;
        let hash: [u8; 32] = Sha256::digest(key).into();
        find(&self.clients, &hash, |k| &k.sha256)
            .map(|k| Caller(Some(k.clone())))
            .ok_or(Error::Unauthorized("Incorrect API key provided."))
    }

    /// The admin key's name, for the audit trail.
    pub fn authenticate_admin(&self, headers: &HeaderMap) -> Result<String, Error> {
        let key = bearer(headers).ok_or(Error::Unauthorized(
            "Missing admin key: send `Authorization: Bearer <admin key>`.",
        ))?;
        let hash: [u8; 32] = Sha256::digest(key).into();
        find(&self.admins, &hash, |k| &k.sha256)
            .map(|k| k.name.clone())
            .ok_or(Error::Unauthorized("Incorrect admin key provided."))
    }
}

/// The hex SHA-256 of a key, as written in config.
pub fn hash_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn ring() -> KeyRing {
        let text = format!(
            r#"
[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[models.m]
backend = "b"
[models.other]
backend = "b"
[keys.alice]
sha256 = "{}"
models = ["m"]
[admin_keys.ops]
sha256 = "{}"
"#,
            hash_hex("sk-alice"),
            hash_hex("sk-admin")
        );
        KeyRing::new(&Config::from_toml(&text, Path::new("t.toml"), &|_| None).unwrap())
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn right_wrong_and_missing_keys() {
        let r = ring();
        let c = r.authenticate(&headers("Bearer sk-alice")).unwrap();
        assert_eq!(c.name(), Some("alice"));
        assert!(c.may_use("m") && !c.may_use("other"));
        assert!(matches!(
            r.authenticate(&headers("Bearer sk-bob")),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            r.authenticate(&HeaderMap::new()),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            r.authenticate(&headers("Basic sk-alice")),
            Err(Error::Unauthorized(_))
        ));
        // The admin key is not a client key, and the other way round.
        assert!(r.authenticate(&headers("Bearer sk-admin")).is_err());
        assert!(r.authenticate_admin(&headers("Bearer sk-alice")).is_err());
        assert_eq!(
            r.authenticate_admin(&headers("bearer sk-admin")).unwrap(),
            "ops"
        );
    }

    #[test]
    fn hashes_never_show_in_debug() {
        let r = ring();
        let dbg = format!("{r:?}");
        assert!(!dbg.contains(&hash_hex("sk-alice")[..16]));
        assert!(dbg.contains("alice"));
    }
}
