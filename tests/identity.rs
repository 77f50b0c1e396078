//! The identity files: layout, modes, refusals and signatures.

use std::fs;
#[cfg(unix)]
use std::fs::Permissions;
#[cfg(unix)]
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use fyn_runner::protocol::{AuthError, verify_signature};
use fyn_runner::runtime::identity::{Identity, IdentityError, identity_dir};

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

fn saved(state: &Path, runner_id: &str) -> Identity {
    let key = Identity::generate_key().unwrap();
    Identity::save(state, runner_id, &key).unwrap();
    Identity::load(state).unwrap().unwrap()
}

#[cfg(unix)]
#[test]
fn save_then_load_round_trips_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Identity::generate_key().unwrap();
    Identity::save(tmp.path(), "runner-1", &key).unwrap();

    let dir = identity_dir(tmp.path());
    assert_eq!(mode_of(&dir), 0o700);
    assert_eq!(mode_of(&dir.join("key")), 0o600);
    assert_eq!(mode_of(&dir.join("runner.json")), 0o600);

    let identity = Identity::load(tmp.path()).unwrap().unwrap();
    assert_eq!(identity.runner_id(), "runner-1");
    assert_eq!(identity.public_key(), Identity::public_key_b64(&key));

    let runner: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("runner.json")).unwrap()).unwrap();
    assert_eq!(
        runner,
        serde_json::json!({"runner_id": "runner-1", "public_key": Identity::public_key_b64(&key)})
    );
    // Nothing but the two files: no temp file left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
}

#[cfg(unix)]
#[test]
fn save_tightens_an_existing_open_identity_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = identity_dir(tmp.path());
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
    saved(tmp.path(), "r");
    assert_eq!(mode_of(&dir), 0o700);
}

#[test]
fn signature_verifies_and_tampering_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let identity = saved(tmp.path(), "runner-7");
    let public = identity.public_key();
    let signature = identity.sign("nonce-abc");

    assert_eq!(
        verify_signature(&public, "nonce-abc", "runner-7", &signature),
        Ok(())
    );
    assert_eq!(
        verify_signature(&public, "nonce-other", "runner-7", &signature),
        Err(AuthError::Mismatch)
    );
    assert_eq!(
        verify_signature(&public, "nonce-abc", "runner-8", &signature),
        Err(AuthError::Mismatch)
    );

    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut bytes = engine.decode(&signature).unwrap();
    bytes[10] ^= 0x01;
    let tampered = engine.encode(bytes);
    assert_eq!(
        verify_signature(&public, "nonce-abc", "runner-7", &tampered),
        Err(AuthError::Mismatch)
    );
}

#[test]
fn generated_keys_differ() {
    let a = Identity::generate_key().unwrap();
    let b = Identity::generate_key().unwrap();
    assert_ne!(Identity::public_key_b64(&a), Identity::public_key_b64(&b));
}

#[test]
fn debug_never_shows_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let identity = saved(tmp.path(), "runner-1");
    let secret = fs::read_to_string(identity_dir(tmp.path()).join("key")).unwrap();
    let shown = format!("{identity:?}");
    assert!(shown.contains("runner-1"), "{shown}");
    assert!(shown.contains(&identity.public_key()), "{shown}");
    assert!(!shown.contains(secret.trim()), "{shown}");
}

#[test]
fn no_identity_is_none() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(Identity::load(tmp.path()).unwrap().is_none());
    assert!(
        Identity::load(&tmp.path().join("missing"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_key_without_runner_json_is_an_unfinished_registration() {
    let tmp = tempfile::tempdir().unwrap();
    saved(tmp.path(), "r");
    fs::remove_file(identity_dir(tmp.path()).join("runner.json")).unwrap();
    assert!(Identity::load(tmp.path()).unwrap().is_none());
}

#[test]
fn runner_json_without_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    saved(tmp.path(), "runner-9");
    fs::remove_file(identity_dir(tmp.path()).join("key")).unwrap();
    let err = Identity::load(tmp.path()).unwrap_err();
    assert!(matches!(err, IdentityError::MissingKey { .. }), "{err}");
    assert!(err.to_string().contains("runner-9"), "{err}");
}

#[cfg(unix)]
#[test]
fn refuses_a_key_readable_by_others() {
    let tmp = tempfile::tempdir().unwrap();
    saved(tmp.path(), "r");
    let key = identity_dir(tmp.path()).join("key");
    fs::set_permissions(&key, Permissions::from_mode(0o644)).unwrap();
    let err = Identity::load(tmp.path()).unwrap_err().to_string();
    let shown = key.display();
    assert!(
        err.contains(&format!(
            "{shown} is accessible by group or others (mode 0644)"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("run chmod 600 {shown}")), "{err}");
}

#[cfg(unix)]
#[test]
fn refuses_an_identity_dir_open_to_others() {
    let tmp = tempfile::tempdir().unwrap();
    saved(tmp.path(), "r");
    let dir = identity_dir(tmp.path());
    fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
    let err = Identity::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("(mode 0755)"), "{err}");
    assert!(
        err.contains(&format!("run chmod 700 {}", dir.display())),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn refuses_a_key_that_does_not_match_the_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    saved(tmp.path(), "r");
    saved(other.path(), "r");
    let key = identity_dir(tmp.path()).join("key");
    fs::copy(identity_dir(other.path()).join("key"), &key).unwrap();
    fs::set_permissions(&key, Permissions::from_mode(0o600)).unwrap();
    let err = Identity::load(tmp.path()).unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err}");
}

#[test]
fn refuses_corrupt_files_naming_them() {
    let cases: [(&str, &[u8]); 4] = [
        ("runner.json", b"{not json"),
        ("runner.json", br#"{"runner_id": "", "public_key": "x"}"#),
        ("key", b"!!! not base64 !!!"),
        ("key", b"c2hvcnQ=\n"),
    ];
    for (file, contents) in cases {
        let tmp = tempfile::tempdir().unwrap();
        saved(tmp.path(), "r");
        let path = identity_dir(tmp.path()).join(file);
        fs::write(&path, contents).unwrap();
        let err = Identity::load(tmp.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::Corrupt { .. }),
            "{file}: {err}"
        );
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

#[test]
fn empty_runner_id_is_not_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Identity::generate_key().unwrap();
    let err = Identity::save(tmp.path(), "", &key).unwrap_err();
    assert!(matches!(err, IdentityError::EmptyRunnerId));
    assert!(!identity_dir(tmp.path()).exists());
}

#[test]
fn remove_deletes_everything_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    saved(tmp.path(), "r");
    let dir = identity_dir(tmp.path());
    fs::write(dir.join(".key.123.0.tmp"), b"leftover").unwrap();
    Identity::remove(tmp.path()).unwrap();
    assert!(!dir.exists());
    assert!(Identity::load(tmp.path()).unwrap().is_none());
    Identity::remove(tmp.path()).unwrap();
}
