//! The version `visitord --version` prints (`VISITORD_VERSION`): the
//! package version and, when built from its own git checkout, the commit
//! (`VISITORD_COMMIT`). Outside one (a source tarball, or the crate vendored
//! inside another repository) or without git installed, the version stands
//! alone.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Without any rerun-if line Cargo would run this again on every change
    // of any file in the package.
    println!("cargo::rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let own_checkout = git(&["rev-parse", "--show-toplevel"])
        .is_some_and(|top| same_dir(Path::new(&top), &manifest_dir));
    let commit = own_checkout
        .then(|| git(&["rev-parse", "--short=10", "HEAD"]))
        .flatten();
    match &commit {
        Some(commit) => {
            println!("cargo::rustc-env=VISITORD_COMMIT={commit}");
            println!("cargo::rustc-env=VISITORD_VERSION={version} (commit {commit})");
        }
        None => println!("cargo::rustc-env=VISITORD_VERSION={version}"),
    }
    if !own_checkout {
        return;
    }
    // Build again when HEAD moves: HEAD itself (a checkout) and the branch it
    // points at (a commit). Files that do not exist are left out, because
    // Cargo would treat them as always changed.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    }
    for path in watched.into_iter().flatten().map(PathBuf::from) {
        if path.exists() {
            println!("cargo::rerun-if-changed={}", path.display());
        }
    }
}

/// The trimmed output of a successful `git ARGS`, or `None`.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
