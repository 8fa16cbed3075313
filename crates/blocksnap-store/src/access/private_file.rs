//! Reading a secret file (an account's identity) only if it is private: a regular file, not
//! reached through a symbolic link, owned by the user running blocksnap, and neither readable
//! nor writable by anyone else (mode 0600 or narrower). The checks are made on the opened file
//! itself (`O_NOFOLLOW`, then `fstat`), so the file cannot be swapped between check and read.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use zeroize::Zeroizing;

use crate::error::StoreError;

/// The largest secret file read (an age identity is one line of 74 characters, with comments).
pub(crate) const MAX_PRIVATE_FILE_LEN: u64 = 64 << 10;

/// Why a secret file was not read.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// There is no such file.
    NotFound,
    /// Another failure of the system, as it said.
    Io(std::io::Error),
    /// The file is not private; the text says why and how to fix it.
    NotPrivate(String),
}

/// The content of the secret file `path` (`what` names it in messages: "identity file"), in a
/// buffer zeroed when dropped, if the file is private.
pub(crate) fn read_private(
    path: &Path,
    what: &str,
) -> std::result::Result<Zeroizing<Vec<u8>>, Refusal> {
    let shown = path.display();
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(Refusal::NotFound),
        Err(rustix::io::Errno::LOOP) => {
            let target =
                std::fs::read_link(path).map_or_else(|_| "?".into(), |t| t.display().to_string());
            return Err(Refusal::NotPrivate(format!(
                "{what} {shown} is a symbolic link (to {target}); blocksnap does not follow links \
                 to secret files: pass the file itself (--identity {target}) or put the file in \
                 the link's place"
            )));
        }
        Err(e) => return Err(Refusal::Io(e.into())),
    };
    let mut file = File::from(fd);
    let meta = file.metadata().map_err(Refusal::Io)?;
    if !meta.file_type().is_file() {
        return Err(Refusal::NotPrivate(format!(
            "{what} {shown} is not a regular file"
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Refusal::NotPrivate(format!(
            "{what} {shown} is owned by uid {}, not by the user running blocksnap (uid {me}): a \
             secret file must be yours alone; if it is yours, run `chown {me} {shown}`, else use \
             your own --identity",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Refusal::NotPrivate(format!(
            "{what} {shown} has mode {mode:04o}: other users can read or change it; run \
             `chmod 600 {shown}`"
        )));
    }
    if meta.len() > MAX_PRIVATE_FILE_LEN {
        return Err(Refusal::NotPrivate(format!(
            "{what} {shown} is {} bytes long, more than a secret file of blocksnap can be ({} \
             bytes): it is not an identity file",
            meta.len(),
            MAX_PRIVATE_FILE_LEN
        )));
    }
    // Room for the whole file (and the read that finds its end) up front: the buffer never
    // grows, so no copy of the secret is left behind in a freed allocation.
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    (&mut file)
        .take(MAX_PRIVATE_FILE_LEN)
        .read_to_end(&mut buf)
        .map_err(Refusal::Io)?;
    Ok(buf)
}

impl Refusal {
    /// The store error for this refusal of `path`.
    pub(crate) fn into_error(
        self,
        path: &Path,
        not_found: impl FnOnce() -> StoreError,
    ) -> StoreError {
        match self {
            Refusal::NotFound => not_found(),
            Refusal::Io(source) => StoreError::Io {
                what: "cannot read identity",
                path: path.to_path_buf(),
                source,
            },
            Refusal::NotPrivate(why) => StoreError::Usage(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn refusal(path: &Path) -> String {
        match read_private(path, "identity file") {
            Err(Refusal::NotPrivate(why)) => why,
            Ok(_) => panic!("{} was read", path.display()),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_private_file_is_read_and_others_are_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.key");
        std::fs::write(&f, b"AGE-SECRET-KEY-1\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            &read_private(&f, "identity file").unwrap()[..],
            b"AGE-SECRET-KEY-1\n"
        );

        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let why = refusal(&f);
            assert!(why.contains(&format!("chmod 600 {}", f.display())), "{why}");
            assert!(why.contains(&format!("{mode:04o}")), "{why}");
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();

        // A link to a private file is refused too, naming its target.
        let link = d.path().join("link.key");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let why = refusal(&link);
        assert!(
            why.contains("symbolic link") && why.contains(&f.display().to_string()),
            "{why}"
        );

        // Not a regular file; too long; missing.
        let why = refusal(d.path());
        assert!(why.contains("not a regular file"), "{why}");
        let big = d.path().join("big.key");
        std::fs::write(&big, vec![b'#'; MAX_PRIVATE_FILE_LEN as usize + 1]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(refusal(&big).contains("bytes long"));
        assert!(matches!(
            read_private(&d.path().join("none"), "identity file"),
            Err(Refusal::NotFound)
        ));
    }

    #[test]
    fn a_file_of_another_user_is_refused_naming_chown() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("theirs.key");
        std::fs::write(&f, b"AGE-SECRET-KEY-1\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Only root can give a file away; elsewhere the check is covered by the owner's case.
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&f, Some(rustix::process::Uid::from_raw(4242)), None).unwrap();
            let why = refusal(&f);
            assert!(
                why.contains("owned by uid 4242") && why.contains("chown 0"),
                "{why}"
            );
        }
    }
}
