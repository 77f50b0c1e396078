//! Files under a [`Host`]'s root: the definitions are written whole (a temporary file
//! renamed into place) so a service manager never reads half a unit.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::{Host, ServiceError};
use crate::platform::Access;

/// Access to service definitions: readable by the manager, writable by root (mode
/// 0644; launchd refuses a daemon plist that group or others can write).
pub(crate) const DEFINITION_ACCESS: Access = Access::Readable;

pub(crate) fn exists(host: &Host, real: &Path) -> bool {
    host.path(real).exists()
}

pub(crate) fn create_dir_all(host: &Host, real: &Path) -> Result<(), ServiceError> {
    let path = host.path(real);
    fs::create_dir_all(&path).map_err(|source| ServiceError::File {
        op: "create the folder",
        path: real.to_owned(),
        source,
    })
}

/// Write `contents` to `real` atomically with `access`, creating the folder.
pub(crate) fn write(
    host: &Host,
    real: &Path,
    contents: &str,
    access: Access,
) -> Result<(), ServiceError> {
    let target = host.path(real);
    let error = |op: &'static str| {
        move |source| ServiceError::File {
            op,
            path: real.to_owned(),
            source,
        }
    };
    if let Some(folder) = target.parent() {
        fs::create_dir_all(folder).map_err(error("create the folder of"))?;
    }
    let mut temp_name = target.file_name().unwrap_or_default().to_os_string();
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = target.with_file_name(temp_name);
    let written = crate::platform::open_options(access)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            // The mode given to open is filtered by the umask; set it exactly.
            crate::platform::set_access(&temp, access)?;
            file.sync_all()
        })
        .and_then(|()| crate::platform::replace_file(&temp, &target));
    if let Err(source) = written {
        let _ = fs::remove_file(&temp);
        return Err(error("write")(source));
    }
    Ok(())
}

pub(crate) fn remove(host: &Host, real: &Path) -> Result<(), ServiceError> {
    match fs::remove_file(host.path(real)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ServiceError::File {
            op: "remove",
            path: real.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}
