//! Privacy: consent statements, subject access (`show`, `export`), the right to be forgotten
//! (`forget`) and the audit trail of those requests. It owns the tables `privacy_consent`,
//! `privacy_tombstones` and `privacy_log`, and the storage folder `_privacy/` (the salt of the
//! identifier hashes and the plans of erasures under way).
//!
//! Identifiers never leave this module in the clear once a person is forgotten: the tombstones
//! and the log hold salted SHA-256 hashes only.

pub mod access;
pub mod consent;
mod exports;
pub mod forget;
pub mod log;
pub mod person;
pub mod tombstone;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::export::files::Location;
use crate::workspace::Workspace;

/// The storage folder of privacy bookkeeping, below the storage root.
const FOLDER: &str = "_privacy/";

/// The folder `_privacy/` of the workspace's storage.
fn folder(ws: &Workspace) -> Result<Location> {
    Location::resolve(ws.storage.root(), FOLDER)
}

/// The workspace's secret salt for identifier hashes, created on first use. Without a salt,
/// the hash of an e-mail address could be looked up in a list of hashed addresses.
pub async fn salt(ws: &Workspace) -> Result<Vec<u8>> {
    use object_store::{PutMode, PutOptions, PutPayload};
    let place = folder(ws)?;
    if let Some(bytes) = place.get("salt").await? {
        return Ok(bytes.to_vec());
    }
    let fresh = uuid::Uuid::new_v4().as_bytes().to_vec();
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    // Two processes creating it at once: the first one wins, both read the winner's salt.
    let put = place
        .store
        .put_opts(&place.path("salt"), PutPayload::from(fresh), options)
        .await;
    match put {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(Error::Other(format!("{}salt: {e}", place.url))),
    }
    place
        .get("salt")
        .await?
        .map(|b| b.to_vec())
        .ok_or_else(|| Error::Other(format!("{}salt: missing after it was written", place.url)))
}

/// The salted hash of an identifier: hex SHA-256 of salt, type and (normalised) value.
pub fn hash_identifier(salt: &[u8], id_type: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(id_type.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    hex::encode(h.finalize())
}

/// Stops the process at a named step when `TRIBE_TEST_PAUSE_AT` names it, so that a test can
/// kill it there (the crash tests of erasure).
fn pause_point(step: &str) {
    if std::env::var("TRIBE_TEST_PAUSE_AT").is_ok_and(|s| s == step) {
        eprintln!("paused at {step}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_depend_on_salt_type_and_value() {
        let a = hash_identifier(b"s1", "email", "ana@example.com");
        assert_eq!(a.len(), 64);
        assert_eq!(a, hash_identifier(b"s1", "email", "ana@example.com"));
        assert_ne!(a, hash_identifier(b"s2", "email", "ana@example.com"));
        assert_ne!(a, hash_identifier(b"s1", "user_id", "ana@example.com"));
        assert_ne!(
            hash_identifier(b"s1", "ab", "c"),
            hash_identifier(b"s1", "a", "bc")
        );
    }
}
