//! Helpers shared by the unit and integration tests (compiled only for
//! them: `cfg(test)` or the test build's `failpoints` feature).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory nobody can create files in, not even root: mode 0555, and,
/// when that does not stop us (root), the immutable attribute (`chattr +i`).
/// Where neither works the test fails, saying so, rather than passing
/// without having tried. Undone on drop so the temporary directory can go.
pub struct ReadOnlyDir {
    path: PathBuf,
    immutable: bool,
}

impl ReadOnlyDir {
    pub fn new(path: &Path) -> ReadOnlyDir {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path).expect("creates the directory");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).expect("chmod 555");
        let mut dir = ReadOnlyDir { path: path.to_path_buf(), immutable: false };
        if writable(path) {
            let chattr = Command::new("chattr").arg("+i").arg(path).status();
            dir.immutable = chattr.as_ref().is_ok_and(|s| s.success());
            assert!(
                !writable(path),
                "cannot make {} read-only here (root, and chattr +i failed: {chattr:?}): run this test as \
                 a normal user or on a file system with chattr",
                path.display()
            );
        }
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn writable(dir: &Path) -> bool {
    tempfile::tempfile_in(dir).is_ok()
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.path).status();
        }
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
    }
}
