//! Windows access control lists: what the Unix modes 0700/0600 and 0755/0644 become
//! on Windows. A folder or file gets a *protected* DACL (nothing inherited from
//! above) that grants full control to its owner account, `SYSTEM` and the
//! Administrators group, plus read and execute to Users where the Unix mode lets
//! others read. Written as SDDL, applied with `SetNamedSecurityInfoW`.
//!
//! The text of the DACL and the judgement of an existing one are pure and tested on
//! every platform; only the system calls are Windows-only.

use super::Access;

/// Well-known SIDs.
pub const SYSTEM_SID: &str = "S-1-5-18";
pub const ADMINISTRATORS_SID: &str = "S-1-5-32-544";
pub const USERS_SID: &str = "S-1-5-32-545";

/// `FILE_ALL_ACCESS`, and `FILE_GENERIC_READ | FILE_GENERIC_EXECUTE`.
const FULL: &str = "FA";
const READ_EXECUTE: &str = "0x1200a9";

/// The SDDL of the protected DACL for `access`, granting `owner_sid` (the account
/// the runner runs as) full control. `container`: a folder, whose entries are
/// inherited by what is created inside it.
pub fn sddl(access: Access, owner_sid: &str, container: bool) -> String {
    let inherit = if container { "OICI" } else { "" };
    let ace = |rights: &str, sid: &str| format!("(A;{inherit};{rights};;;{sid})");
    // "D:P": a DACL, protected from inheriting the parent's entries.
    let mut text = String::from("D:P");
    text.push_str(&ace(FULL, SYSTEM_SID));
    text.push_str(&ace(FULL, ADMINISTRATORS_SID));
    if owner_sid != SYSTEM_SID && owner_sid != ADMINISTRATORS_SID {
        text.push_str(&ace(FULL, owner_sid));
    }
    if access == Access::Readable {
        text.push_str(&ace(READ_EXECUTE, USERS_SID));
    }
    text
}

/// One entry of a DACL, as far as a privacy check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ace {
    /// An access-allowed entry (deny entries never widen access).
    pub allows: bool,
    /// Inherit-only: it applies to children, not to this object.
    pub inherit_only: bool,
    /// The trustee, as a string SID (`S-1-5-...`).
    pub sid: String,
    /// The access mask it grants.
    pub mask: u32,
}

/// The trustees, other than `me`, `SYSTEM` and Administrators, that an object's DACL
/// lets in: what makes a private file not private. `None` for the DACL stands for a
/// NULL DACL, which lets everyone in.
pub fn foreign_grantees(dacl: Option<&[Ace]>, me: &str) -> Vec<String> {
    let Some(aces) = dacl else {
        return vec!["Everyone (the file has no access list at all)".to_owned()];
    };
    let mut foreign: Vec<String> = aces
        .iter()
        .filter(|ace| ace.allows && !ace.inherit_only && ace.mask != 0)
        .map(|ace| ace.sid.clone())
        .filter(|sid| sid != me && sid != SYSTEM_SID && sid != ADMINISTRATORS_SID)
        .collect();
    foreign.dedup();
    foreign
}

#[cfg(windows)]
pub use system::{apply, current_user_sid, dacl_of, with_private_attributes};

#[cfg(windows)]
mod system {
    use std::io;
    use std::path::Path;
    use std::ptr;

    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_SUCCESS, HANDLE, HLOCAL, LocalFree, WIN32_ERROR,
    };
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
        GetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT, SetNamedSecurityInfoW,
    };
    use windows_sys::Win32::Security::{
        ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, GetAce,
        GetSecurityDescriptorDacl, GetTokenInformation, INHERIT_ONLY_ACE,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES,
        TOKEN_QUERY, TOKEN_USER, TokenUser,
    };
    use windows_sys::Win32::System::SystemServices::ACCESS_ALLOWED_ACE_TYPE;

    /// ACCESS_DENIED, ACCESS_DENIED_OBJECT, ACCESS_DENIED_CALLBACK,
    /// ACCESS_DENIED_CALLBACK_OBJECT: entries that only ever take access away.
    const DENY_TYPES: [u32; 4] = [1, 6, 10, 12];
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    use super::{Access, Ace, sddl};
    use crate::platform::wide;

    /// Memory the system allocated with `LocalAlloc`, freed on drop.
    struct Local(*mut core::ffi::c_void);

    impl Drop for Local {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: the pointer came from an API documented to allocate with
                // LocalAlloc, and is freed once, here.
                unsafe { LocalFree(self.0 as HLOCAL) };
            }
        }
    }

    fn win32(code: WIN32_ERROR) -> io::Result<()> {
        if code == ERROR_SUCCESS {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(code as i32))
        }
    }

    /// The protected DACL for `access`, as a security descriptor and its DACL.
    fn descriptor(access: Access, container: bool) -> io::Result<(Local, *mut ACL)> {
        let text = wide(sddl(access, &current_user_sid()?, container).as_ref());
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `text` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        let sd = Local(sd);
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = ptr::null_mut();
        // SAFETY: `sd.0` is a valid descriptor; the DACL pointer points into it and
        // is used only while `sd` lives.
        let ok =
            unsafe { GetSecurityDescriptorDacl(sd.0, &mut present, &mut dacl, &mut defaulted) };
        if ok == 0 || present == 0 || dacl.is_null() {
            return Err(io::Error::other("the SDDL gave no access list"));
        }
        Ok((sd, dacl))
    }

    /// Replace the DACL of the file or folder at `path` with the protected one for
    /// `access`.
    pub fn apply(path: &Path, access: Access) -> io::Result<()> {
        let (_sd, dacl) = descriptor(access, path.is_dir())?;
        let name = wide(path.as_os_str());
        // SAFETY: `name` is NUL-terminated; `dacl` is valid while `_sd` lives.
        win32(unsafe {
            SetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                ptr::null_mut(),
                ptr::null_mut(),
                dacl,
                ptr::null(),
            )
        })
    }

    /// Call `f` with `SECURITY_ATTRIBUTES` (as the raw pointer Win32 calls take) that
    /// give a new object the private access list: for objects made by handle rather
    /// than by path, such as named pipes.
    pub fn with_private_attributes<T>(
        f: impl FnOnce(*mut core::ffi::c_void) -> io::Result<T>,
    ) -> io::Result<T> {
        let (sd, _dacl) = descriptor(Access::Private, false)?;
        let mut attributes = SECURITY_ATTRIBUTES {
            nLength: u32::try_from(std::mem::size_of::<SECURITY_ATTRIBUTES>()).unwrap_or(0),
            lpSecurityDescriptor: sd.0,
            bInheritHandle: 0,
        };
        f(ptr::addr_of_mut!(attributes).cast())
    }

    fn sid_string(sid: PSID) -> io::Result<String> {
        let mut text: windows_sys::core::PWSTR = ptr::null_mut();
        // SAFETY: `sid` is a valid SID; `text` receives a LocalAlloc'd string.
        if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let text = Local(text.cast());
        let ptr = text.0 as *const u16;
        // SAFETY: the string is NUL-terminated, as the API documents.
        let len = (0..).take_while(|&i| unsafe { *ptr.add(i) } != 0).count();
        // SAFETY: `len` units were just read as valid.
        let units = unsafe { std::slice::from_raw_parts(ptr, len) };
        Ok(String::from_utf16_lossy(units))
    }

    /// The string SID of the account this process runs as.
    pub fn current_user_sid() -> io::Result<String> {
        let mut token: HANDLE = ptr::null_mut();
        // SAFETY: the pseudo-handle of this process is always valid.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buffer = vec![0u64; 64];
        let mut needed = 0u32;
        let size = u32::try_from(buffer.len() * 8).unwrap_or(u32::MAX);
        // SAFETY: `buffer` is writable for `size` bytes and 8-byte aligned, as
        // TOKEN_USER needs.
        let ok = unsafe {
            GetTokenInformation(
                token,
                TokenUser,
                buffer.as_mut_ptr().cast(),
                size,
                &mut needed,
            )
        };
        let error = io::Error::last_os_error();
        // SAFETY: `token` was opened above and is closed once.
        unsafe { CloseHandle(token) };
        if ok == 0 {
            return Err(error);
        }
        // SAFETY: GetTokenInformation filled a TOKEN_USER at the start of `buffer`.
        let user = unsafe { &*(buffer.as_ptr() as *const TOKEN_USER) };
        sid_string(user.User.Sid)
    }

    /// The entries of the DACL of `path` (`None`: a NULL DACL, open to everyone).
    pub fn dacl_of(path: &Path) -> io::Result<Option<Vec<Ace>>> {
        let name = wide(path.as_os_str());
        let mut dacl: *mut ACL = ptr::null_mut();
        let mut sd: PSECURITY_DESCRIPTOR = ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor
        // that `dacl` points into.
        win32(unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION,
                ptr::null_mut(),
                ptr::null_mut(),
                &mut dacl,
                ptr::null_mut(),
                &mut sd,
            )
        })?;
        let _sd = Local(sd);
        if dacl.is_null() {
            return Ok(None);
        }
        // SAFETY: `dacl` points to a valid ACL inside `_sd`.
        let count = u32::from(unsafe { (*dacl).AceCount });
        let mut aces = Vec::new();
        for index in 0..count {
            let mut ace: *mut core::ffi::c_void = ptr::null_mut();
            // SAFETY: `index` is below the ACL's entry count.
            if unsafe { GetAce(dacl, index, &mut ace) } == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: every ACE starts with an ACE_HEADER.
            let header = unsafe { &*(ace as *const ACE_HEADER) };
            let kind = u32::from(header.AceType);
            if DENY_TYPES.contains(&kind) {
                // Deny entries never widen access.
                continue;
            }
            let inherit_only = u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0;
            if kind != ACCESS_ALLOWED_ACE_TYPE {
                // Object, callback and compound entries can grant access too; their
                // layouts differ, so the trustee is not read: such an entry counts as a
                // grant to someone unknown, which no private file may have.
                aces.push(Ace {
                    allows: true,
                    inherit_only,
                    sid: format!("(an access entry of type {kind})"),
                    mask: u32::MAX,
                });
                continue;
            }
            // SAFETY: an ACCESS_ALLOWED_ACE_TYPE entry has the ACCESS_ALLOWED_ACE
            // layout, with its SID starting at `SidStart`.
            let allowed = unsafe { &*(ace as *const ACCESS_ALLOWED_ACE) };
            let sid = sid_string(ptr::addr_of!(allowed.SidStart) as PSID)?;
            aces.push(Ace {
                allows: true,
                inherit_only,
                sid,
                mask: allowed.Mask,
            });
        }
        Ok(Some(aces))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "S-1-5-21-1-2-3-1001";

    #[test]
    fn private_folders_let_in_only_the_owner_system_and_administrators() {
        assert_eq!(
            sddl(Access::Private, ME, true),
            "D:P(A;OICI;FA;;;S-1-5-18)(A;OICI;FA;;;S-1-5-32-544)(A;OICI;FA;;;S-1-5-21-1-2-3-1001)"
        );
        assert_eq!(
            sddl(Access::GroupReadable, ME, false),
            "D:P(A;;FA;;;S-1-5-18)(A;;FA;;;S-1-5-32-544)(A;;FA;;;S-1-5-21-1-2-3-1001)"
        );
    }

    #[test]
    fn readable_adds_read_for_users_and_system_is_not_listed_twice() {
        assert_eq!(
            sddl(Access::Readable, SYSTEM_SID, true),
            "D:P(A;OICI;FA;;;S-1-5-18)(A;OICI;FA;;;S-1-5-32-544)(A;OICI;0x1200a9;;;S-1-5-32-545)"
        );
    }

    #[test]
    fn foreign_grantees_ignore_the_trusted_inherit_only_and_deny_entries() {
        let ace = |allows, inherit_only, sid: &str| Ace {
            allows,
            inherit_only,
            sid: sid.to_owned(),
            mask: 0x1f01ff,
        };
        let dacl = [
            ace(true, false, SYSTEM_SID),
            ace(true, false, ADMINISTRATORS_SID),
            ace(true, false, ME),
            ace(true, true, "S-1-3-0"),
            ace(false, false, "S-1-1-0"),
        ];
        assert!(foreign_grantees(Some(&dacl), ME).is_empty());
        let mut open = dacl.to_vec();
        open.push(ace(true, false, USERS_SID));
        assert_eq!(
            foreign_grantees(Some(&open), ME),
            vec![USERS_SID.to_owned()]
        );
        assert_eq!(foreign_grantees(None, ME).len(), 1);
    }
}
