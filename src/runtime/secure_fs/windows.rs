//! Windows: private means a protected access list (nothing inherited) that lets in
//! the runner's account, `SYSTEM` and the Administrators group, and nobody else
//! (`crate::platform::acl`). Folders pass those entries on to what is created in
//! them, so the store, the traces and job folders below the state directory are
//! private from their creation.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use super::{SecureFsError, io_error};
use crate::platform::{Access, acl};

/// Creates `path` and its missing parents, and gives `path` the private access list
/// (replacing what it had: an existing folder is tightened, as `chmod 700` would).
/// A folder this account may not change fails with the system's "access denied".
pub fn create_private_dir(path: &Path) -> Result<(), SecureFsError> {
    fs::create_dir_all(path).map_err(io_error("create directory", path))?;
    let meta = fs::metadata(path).map_err(io_error("inspect", path))?;
    if !meta.is_dir() {
        return Err(SecureFsError::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    acl::apply(path, Access::Private).map_err(io_error("restrict access to", path))
}

/// An existing file of the runner's that must be private (the store): it was created
/// inside the private state folder and inherits its access list; nothing to check
/// beyond what the folder's own check covers.
pub fn ensure_private_file(_path: &Path) -> Result<(), SecureFsError> {
    Ok(())
}

/// Fails, naming the accounts, when the access list of `path` lets in anyone but this
/// account, `SYSTEM` and Administrators.
pub fn check_private(path: &Path) -> Result<(), SecureFsError> {
    let dacl = acl::dacl_of(path).map_err(io_error("inspect", path))?;
    let me = acl::current_user_sid().map_err(io_error("inspect", path))?;
    let foreign = acl::foreign_grantees(dacl.as_deref(), &me);
    if foreign.is_empty() {
        return Ok(());
    }
    Err(SecureFsError::SharedAcl {
        path: path.to_path_buf(),
        remove: foreign
            .iter()
            .filter(|sid| sid.starts_with("S-"))
            .map(|sid| format!("*{sid}"))
            .collect::<Vec<_>>()
            .join(" "),
        grantees: foreign.join(", "),
    })
}

/// Windows cannot sync a folder; see `crate::platform::sync_dir`. The renames that
/// must be durable write through instead (`crate::platform::replace_file`).
pub fn sync_dir(dir: &Path) -> Result<(), SecureFsError> {
    crate::platform::sync_dir(dir).map_err(io_error("sync directory", dir))
}

/// Creates a new file (never an existing one) and gives it the private access list
/// before anything is written to it.
pub fn create_private_file(path: &Path) -> Result<File, SecureFsError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error("create", path))?;
    if let Err(source) = acl::apply(path, Access::Private) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(SecureFsError::Io {
            op: "restrict access to",
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::super::write_private_file;
    use super::*;

    fn grantees(path: &Path) -> Vec<String> {
        let me = acl::current_user_sid().unwrap();
        acl::foreign_grantees(acl::dacl_of(path).unwrap().as_deref(), &me)
    }

    #[test]
    fn private_dirs_and_files_let_in_no_one_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        create_private_dir(&dir).unwrap();
        assert!(grantees(&dir).is_empty(), "{:?}", grantees(&dir));
        let file = dir.join("secret");
        write_private_file(&file, b"x").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"x");
        check_private(&dir).unwrap();
        check_private(&file).unwrap();
    }

    /// Wine (8) accepts `SetNamedSecurityInfoW` but keeps no DACL: it shows one made
    /// from the Unix mode bits. An ACL written here cannot be read back there.
    fn under_wine() -> bool {
        use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
        // SAFETY: NUL-terminated names; ntdll is loaded in every process.
        unsafe {
            let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
            !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
        }
    }

    #[test]
    fn a_file_readable_by_users_is_refused_with_the_fix() {
        if under_wine() {
            eprintln!("skipped under Wine, which keeps no file DACLs");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("key");
        fs::write(&file, b"x").unwrap();
        acl::apply(&file, Access::Readable).unwrap();
        let err = check_private(&file).unwrap_err().to_string();
        assert!(err.contains(acl::USERS_SID), "{err}");
        assert!(err.contains("icacls"), "{err}");
    }
}
