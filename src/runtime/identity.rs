//! The runner's identity: the runner ID the API gave it at registration and the
//! Ed25519 key that proves it, kept in `<state_dir>/identity/` (mode 0700):
//!
//! - `key`: the 32-byte secret as base64 text, mode 0600;
//! - `runner.json`: `{"runner_id": "...", "public_key": "<base64>"}`, mode 0600.
//!
//! `key` is always written before `runner.json`, so the only state a crash can
//! leave is a key without an ID (registration never finished: `load` says there is
//! no identity) and never an ID without its key.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SECRET_KEY_LENGTH, SecretKey, Signer, SigningKey};
use serde::{Deserialize, Serialize};

use super::secure_fs::{self, SecureFsError};
use crate::protocol::auth_message;

pub const IDENTITY_DIR: &str = "identity";
pub const KEY_FILE: &str = "key";
pub const RUNNER_FILE: &str = "runner.json";

/// Base64 of 32 bytes with padding.
const KEY_B64_LEN: usize = 44;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Fs(#[from] SecureFsError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{runner} names runner {runner_id} but {key} is missing")]
    MissingKey {
        runner: PathBuf,
        key: PathBuf,
        runner_id: String,
    },
    #[error(
        "the key in {key} does not match the public key stored in {runner}; \
         the identity is unusable: re-register this runner"
    )]
    KeyMismatch { key: PathBuf, runner: PathBuf },
    #[error("refusing to save an empty runner ID")]
    EmptyRunnerId,
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// `runner.json` on disk.
#[derive(Serialize, Deserialize)]
struct RunnerFile {
    runner_id: String,
    public_key: String,
}

pub struct Identity {
    runner_id: String,
    key: SigningKey,
}

/// Shows the runner ID and public key only: the secret must never reach a log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("runner_id", &self.runner_id)
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

pub fn identity_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(IDENTITY_DIR)
}

impl Identity {
    /// A fresh key from the operating system's random number generator.
    ///
    /// Returns an error rather than panicking (as `UnwrapErr(SysRng)` would) when the
    /// generator is unavailable, so the caller can roll back and report it.
    pub fn generate_key() -> Result<SigningKey, IdentityError> {
        let mut secret: SecretKey = [0; SECRET_KEY_LENGTH];
        let filled = getrandom::fill(&mut secret).map_err(IdentityError::Random);
        let key = filled.map(|()| SigningKey::from_bytes(&secret));
        wipe(&mut secret);
        key
    }

    /// The public half as the API expects it in `register`.
    pub fn public_key_b64(key: &SigningKey) -> String {
        STANDARD.encode(key.verifying_key().as_bytes())
    }

    /// Writes the identity: the key first, then `runner.json` (see the module doc).
    pub fn save(state_dir: &Path, runner_id: &str, key: &SigningKey) -> Result<(), IdentityError> {
        if runner_id.is_empty() {
            return Err(IdentityError::EmptyRunnerId);
        }
        let dir = identity_dir(state_dir);
        secure_fs::create_private_dir(&dir)?;
        // A registration kept this key before `register` (`keep_key`): it is on disk
        // already, and writing it again would cost two more disk syncs per runner.
        // Anything else there (another key, a file that cannot be read) is replaced.
        let kept = Self::kept_key(state_dir)
            .ok()
            .flatten()
            .is_some_and(|kept| kept.verifying_key() == key.verifying_key());
        if !kept {
            write_key(&dir.join(KEY_FILE), key)?;
        }
        let runner = RunnerFile {
            runner_id: runner_id.to_owned(),
            public_key: Self::public_key_b64(key),
        };
        let mut json = serde_json::to_vec_pretty(&runner).map_err(|e| IdentityError::Corrupt {
            path: dir.join(RUNNER_FILE),
            detail: e.to_string(),
        })?;
        json.push(b'\n');
        secure_fs::write_private_file(&dir.join(RUNNER_FILE), &json)?;
        Ok(())
    }

    /// Keeps the key of a registration in progress: the key file alone (0600 in the
    /// 0700 identity folder), before `register` is sent, so a registration retried
    /// (after a cut, or by the next process after a crash) carries the same public key
    /// and an API that committed the first attempt answers with the same runner ID.
    /// `save` adds `runner.json` once the API has answered `registered`.
    pub fn keep_key(state_dir: &Path, key: &SigningKey) -> Result<(), IdentityError> {
        let dir = identity_dir(state_dir);
        secure_fs::create_private_dir(&dir)?;
        write_key(&dir.join(KEY_FILE), key)
    }

    /// The key a registration that did not finish kept (a key file without
    /// `runner.json`); `None` when there is none, or when the identity is complete.
    pub fn kept_key(state_dir: &Path) -> Result<Option<SigningKey>, IdentityError> {
        let dir = identity_dir(state_dir);
        let key_path = dir.join(KEY_FILE);
        if !exists(&key_path)? || exists(&dir.join(RUNNER_FILE))? {
            return Ok(None);
        }
        secure_fs::check_private(&dir)?;
        secure_fs::check_private(&key_path)?;
        read_key(&key_path).map(Some)
    }

    /// Removes a key kept by a registration that did not finish (the identity folder
    /// without `runner.json`); returns whether there was one. A complete identity is
    /// left alone.
    pub fn forget_kept_key(state_dir: &Path) -> Result<bool, IdentityError> {
        let dir = identity_dir(state_dir);
        if !exists(&dir.join(KEY_FILE))? || exists(&dir.join(RUNNER_FILE))? {
            return Ok(false);
        }
        Self::remove(state_dir)?;
        Ok(true)
    }

    /// The stored identity, or `None` when registration never completed (no
    /// identity folder, or no `runner.json`). Refuses an identity that others can
    /// read, that is corrupt, or whose key does not match its public key.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let dir = identity_dir(state_dir);
        if !exists(&dir)? {
            return Ok(None);
        }
        secure_fs::check_private(&dir)?;
        let runner_path = dir.join(RUNNER_FILE);
        let Some(runner) = read_runner_file(&runner_path)? else {
            return Ok(None);
        };
        let key_path = dir.join(KEY_FILE);
        if !exists(&key_path)? {
            return Err(IdentityError::MissingKey {
                runner: runner_path,
                key: key_path,
                runner_id: runner.runner_id,
            });
        }
        secure_fs::check_private(&key_path)?;
        let key = read_key(&key_path)?;
        if Self::public_key_b64(&key) != runner.public_key {
            return Err(IdentityError::KeyMismatch {
                key: key_path,
                runner: runner_path,
            });
        }
        Ok(Some(Identity {
            runner_id: runner.runner_id,
            key,
        }))
    }

    /// Deletes the identity (install rollback). `runner.json` goes first so a crash
    /// part-way never leaves an ID without its key. Missing files are fine.
    pub fn remove(state_dir: &Path) -> Result<(), IdentityError> {
        let dir = identity_dir(state_dir);
        if !exists(&dir)? {
            return Ok(());
        }
        remove_file_if_present(&dir.join(RUNNER_FILE))?;
        secure_fs::sync_dir(&dir)?;
        // Also sweeps the key and any temp file a crashed write left behind.
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(IdentityError::Remove { path: dir, source }),
        }
        if state_dir.exists() {
            secure_fs::sync_dir(state_dir)?;
        }
        Ok(())
    }

    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    pub fn public_key(&self) -> String {
        Self::public_key_b64(&self.key)
    }

    /// The base64 signature `authenticate` carries for this connection's nonce.
    pub fn sign(&self, nonce: &str) -> String {
        let signature = self.key.sign(&auth_message(nonce, &self.runner_id));
        STANDARD.encode(signature.to_bytes())
    }
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists().map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_file_if_present(path: &Path) -> Result<(), IdentityError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IdentityError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_runner_file(path: &Path) -> Result<Option<RunnerFile>, IdentityError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |detail: String| IdentityError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let runner: RunnerFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if runner.runner_id.is_empty() {
        return Err(corrupt("runner_id is empty".into()));
    }
    Ok(Some(runner))
}

/// The key file holds base64 text, kept in fixed buffers that are wiped after use.
fn write_key(path: &Path, key: &SigningKey) -> Result<(), IdentityError> {
    let mut secret = key.to_bytes();
    let mut text = [0u8; KEY_B64_LEN + 1];
    let encoded = STANDARD.encode_slice(secret, &mut text[..KEY_B64_LEN]);
    wipe(&mut secret);
    let result = match encoded {
        Ok(len) => {
            text[len] = b'\n';
            secure_fs::write_private_file(path, &text[..=len]).map_err(IdentityError::from)
        }
        Err(e) => Err(IdentityError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    };
    wipe(&mut text);
    result
}

fn read_key(path: &Path) -> Result<SigningKey, IdentityError> {
    let mut text = fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut secret: SecretKey = [0; SECRET_KEY_LENGTH];
    // Room for a few bytes too many, so an over-long key is reported as the wrong
    // length rather than as a buffer error.
    let mut buf = [0u8; SECRET_KEY_LENGTH + 3];
    let decoded = STANDARD.decode_slice(text.trim_ascii(), &mut buf);
    wipe(&mut text);
    let result = match decoded {
        Ok(SECRET_KEY_LENGTH) => {
            secret.copy_from_slice(&buf[..SECRET_KEY_LENGTH]);
            Ok(SigningKey::from_bytes(&secret))
        }
        Ok(len) => Err(format!(
            "expected {SECRET_KEY_LENGTH} bytes of base64, got {len}"
        )),
        Err(e) => Err(format!("not a base64 key: {e}")),
    };
    wipe(&mut buf);
    wipe(&mut secret);
    result.map_err(|detail| IdentityError::Corrupt {
        path: path.to_path_buf(),
        detail,
    })
}

/// Overwrites secret bytes; `black_box` keeps the compiler from dropping the stores
/// as dead writes.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}
