//! API keys: each belongs to one organisation, and every API call is scoped to the key's organisation.
//!
//! Invariant: keys are kept only as SHA-256 hashes, in the file and in memory, and are never logged;
//! a request without a known key never reaches a handler. The keys file is read again on SIGHUP
//! ([`reload_on_sighup`]): a valid file replaces every key at once (a revoked key is refused from
//! the next request on); an invalid one is logged and the keys in use stay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::error::ApiError;

#[derive(Debug, Deserialize)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
struct KeyEntry {
    organisation: String,
    /// Hex SHA-256 of the key.
    sha256: String,
    /// A label for the key's holder, logged instead of the key.
    #[serde(default)]
    name: String,
}

/// The organisation a request acts for, and the label of the key it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub organisation: Arc<str>,
    pub key_name: Arc<str>,
}

/// Key hash -> its caller.
type Table = HashMap<[u8; 32], Caller>;

/// The keys in use; clones share them, so a reload is seen by every holder.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    by_hash: Arc<RwLock<Arc<Table>>>,
    /// The file they were loaded from, for [`ApiKeys::reload`].
    file: Option<Arc<PathBuf>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("could not read API keys file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("API keys file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("API keys file {path}, key {index}: {problem}")]
    Entry {
        path: String,
        index: usize,
        problem: String,
    },
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut keys = Self::parse(&text, &shown)?;
        keys.file = Some(Arc::new(path.to_owned()));
        Ok(keys)
    }

    /// Reads the keys file again and, when it is valid, replaces every key at once; returns how
    /// many keys are now in use. Keys not loaded from a file have nothing to reload.
    pub fn reload(&self) -> Result<usize, KeysError> {
        let Some(file) = &self.file else {
            return Ok(self.len());
        };
        let fresh = Self::load(file)?;
        let table = fresh.table();
        let count = table.len();
        *self.by_hash.write().unwrap_or_else(PoisonError::into_inner) = table;
        Ok(count)
    }

    fn table(&self) -> Arc<Table> {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, KeysError> {
        let file: KeysFile = toml::from_str(text).map_err(|source| KeysError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut by_hash = HashMap::new();
        for (index, entry) in file.keys.into_iter().enumerate() {
            let problem = |problem: &str| KeysError::Entry {
                path: path.to_owned(),
                index,
                problem: problem.to_owned(),
            };
            if entry.organisation.trim().is_empty() {
                return Err(problem("organisation is empty"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(entry.sha256.trim(), &mut hash)
                .map_err(|_| problem("sha256 must be 64 hex digits"))?;
            let caller = Caller {
                organisation: entry.organisation.into(),
                key_name: entry.name.into(),
            };
            if by_hash.insert(hash, caller).is_some() {
                return Err(problem("the same key appears twice"));
            }
        }
        Ok(ApiKeys {
            by_hash: Arc::new(RwLock::new(Arc::new(by_hash))),
            file: None,
        })
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let by_hash = pairs
            .into_iter()
            .map(|(organisation, key)| {
                (
                    hash_key(key),
                    Caller {
                        organisation: organisation.into(),
                        key_name: "".into(),
                    },
                )
            })
            .collect();
        ApiKeys {
            by_hash: Arc::new(RwLock::new(Arc::new(by_hash))),
            file: None,
        }
    }

    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn authenticate(&self, key: &str) -> Option<Caller> {
        let hash = hash_key(key);
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&hash)
            .cloned()
    }
}

/// Reloads `keys` from their file on every SIGHUP, until the process ends; logs each outcome.
pub fn reload_on_sighup(keys: ApiKeys) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match keys.reload() {
                Ok(count) => tracing::info!(keys = count, "API keys reloaded (SIGHUP)."),
                Err(error) => {
                    tracing::error!(%error, "API keys not reloaded (SIGHUP); the keys in use stay.")
                }
            }
        }
    }))
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key (256 bits, hex) and its hash, for `formstream keys new`.
pub fn new_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("fsk_{}", hex::encode(bytes));
    let hash = hex::encode(hash_key(&key));
    (key, hash)
}

/// Anything that holds the API keys (the app state).
pub trait HasApiKeys {
    fn api_keys(&self) -> &ApiKeys;

    /// The caller of a request that carries no key, authenticated another way (the gateway's
    /// console session cookie): `None` when the request has no such credential, so that it is
    /// answered 401. Keys only by default.
    fn session_caller(&self, _parts: &Parts) -> Option<Result<Caller, ApiError>> {
        None
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: HasApiKeys + Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let key = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim);
        let caller = match key {
            Some(key) => state
                .api_keys()
                .authenticate(key)
                .ok_or(ApiError::Unauthorized),
            None => state
                .session_caller(parts)
                .unwrap_or(Err(ApiError::Unauthorized)),
        }?;
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            let _ = slot.0.set(caller.clone());
        }
        Ok(caller)
    }
}

/// Where the [`Caller`] extractor leaves the caller it authenticated, for a layer that writes an
/// audit line once the request is answered: the layer puts one in the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(Arc<std::sync::OnceLock<Caller>>);

impl CallerSlot {
    /// The request's caller, once the handler authenticated it.
    pub fn get(&self) -> Option<&Caller> {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_parses_and_authenticates() {
        let hash = hex::encode(hash_key("secret-1"));
        let text =
            format!("[[keys]]\norganisation = \"acme\"\nsha256 = \"{hash}\"\nname = \"app\"\n");
        let keys = ApiKeys::parse(&text, "keys.toml").expect("valid file");
        assert_eq!(keys.len(), 1);
        assert_eq!(
            &*keys
                .authenticate("secret-1")
                .expect("known key")
                .organisation,
            "acme"
        );
        assert!(keys.authenticate("secret-2").is_none());
    }

    #[test]
    fn bad_entries_are_reported_with_their_index() {
        let text = "[[keys]]\norganisation = \"acme\"\nsha256 = \"nothex\"\n";
        let error = ApiKeys::parse(text, "keys.toml").expect_err("bad hash");
        assert!(error.to_string().contains("key 0"), "{error}");
    }

    #[test]
    fn new_keys_hash_to_what_they_say() {
        let (key, hash) = new_key();
        assert_eq!(hex::encode(hash_key(&key)), hash);
    }
}
