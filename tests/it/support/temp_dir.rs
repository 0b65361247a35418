//! A temporary directory for one test: a fresh directory per call, removed with everything in
//! it when dropped. Only `std`: the library's unit tests include this file too (`src/lib.rs`,
//! `test_support`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A directory under the system's temporary directory, named
/// `wsgate-<label>-<pid>-<counter>-<time>`: the process id and a counter keep concurrent tests
/// apart, the clock keeps a later run apart from anything an earlier one (with the same pid)
/// left behind. Removed, with its contents, on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty directory; `label` (e.g. `"tls"`) only helps a human who finds it.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir().join(format!(
                "wsgate-{label}-{}-{n}-{nanos:08x}",
                std::process::id()
            ));
            // `create_dir`, not `create_dir_all`: an existing directory is someone else's.
            match std::fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temporary directory {}: {e}", path.display()),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory (nothing is created).
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `contents` to `name` inside the directory (creating subdirectories `name`
    /// names), replacing any earlier file; returns the file's path.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::TempDir;

    #[test]
    fn temp_dirs_are_distinct_hold_files_and_are_removed_on_drop() {
        let a = TempDir::new("selftest");
        let b = TempDir::new("selftest");
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir() && b.path().is_dir());
        let file = a.write("sub/file.txt", "contents");
        assert_eq!(file, a.join("sub/file.txt"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "contents");
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists(), "{} was not removed", path.display());
        assert!(b.path().is_dir());
    }
}
