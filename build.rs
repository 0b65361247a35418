//! Stamps the binary with its git commit and build date, for `wsgate --version`.
//!
//! Never fails the build: a source tree without git (a crate tarball, a container build that
//! leaves `.git` out) gets "unknown". Both values can be given from outside instead:
//! `WSGATE_GIT_COMMIT` (a container build passes the commit in as a build argument) and
//! `SOURCE_DATE_EPOCH` (reproducible builds: the same sources give the same binary, so the
//! date must come from the sources, not the clock).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=WSGATE_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match std::env::var("WSGATE_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git_commit(&root).unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=WSGATE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=WSGATE_BUILD_DATE={}", build_date());
}

/// The short hash of HEAD, with `-dirty` if tracked files differ from it; `None` when the
/// sources are not the top of a git work tree (git missing, or a parent directory's repository,
/// which says nothing about these sources).
///
/// Reruns only when HEAD moves (a checkout, a commit): watching every source file would rerun
/// this script, and relink, on each edit. So `-dirty` is as of the last commit or checkout.
fn git_commit(root: &Path) -> Option<String> {
    let top = git(root, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    // `--git-path` resolves both in a linked worktree (HEAD per worktree, refs shared).
    let head = git(root, &["rev-parse", "--git-path", "HEAD"])?;
    rerun_if_changed(root, &head);
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = git(root, &["rev-parse", "--git-path", &branch])?;
        rerun_if_changed(root, &loose);
        // A ref with no loose file lives in packed-refs.
        if let Some(packed) = git(root, &["rev-parse", "--git-path", "packed-refs"]) {
            rerun_if_changed(root, &packed);
        }
    }
    let hash = git(root, &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(root, &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

fn rerun_if_changed(root: &Path, git_path: &str) {
    let path = root.join(git_path);
    // Cargo reruns the script whenever a watched path does not exist; a missing loose ref is
    // normal (packed), so only existing files are watched.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Runs git in `dir`; its trimmed stdout if it succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    // No optional locks: `status` would otherwise refresh the index, racing the user's git.
    let out = Command::new("git")
        .arg("--no-optional-locks")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// `YYYY-MM-DD` in UTC, from `SOURCE_DATE_EPOCH` if set, else now.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
