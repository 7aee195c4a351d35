//! Leases: the lock that lets exactly one node of a fleet sharing
//! `state_dir` order a given name (or create the account).
//!
//! A lease is a small file naming its holder and when it expires. It is
//! taken by hard-linking a complete file into place: `link` fails when the
//! name exists, atomically, on local file systems and NFS alike, and a
//! reader never sees a half-written lease (the method of NFS-safe lock
//! files). A lease whose holder died is taken over once it expired: it is
//! first renamed aside, and the renamed file is checked to be the expired
//! one before the new lease is linked in.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::StoreError;

/// A lease held by this process; released on drop.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    token: String,
}

/// What a lease file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Which node holds it (host name and process id), for operators.
    pub owner: String,
    /// Unique to one taking of the lease.
    token: String,
    /// Unix seconds.
    pub expires: i64,
}

/// The outcome of trying to take a lease.
#[derive(Debug)]
pub enum Taken {
    Yes(Lease),
    /// Someone else holds it until `expires`.
    HeldBy(Holder),
}

fn io_error(file: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        file: file.to_path_buf(),
        reason: e.to_string(),
    }
}

impl Lease {
    /// Takes the lease at `path` for `ttl` from `now` (Unix seconds),
    /// unless another holder's is still running.
    pub fn try_take(
        path: &Path,
        owner: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<Taken, StoreError> {
        let token = super::random_hex();
        let holder = Holder {
            owner: owner.to_owned(),
            token: token.clone(),
            expires: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
        };
        let temp = sibling(path, &token, "new");
        write_new(&temp, &holder).map_err(|e| io_error(&temp, e))?;
        let outcome = take(path, &temp, now);
        let _ = std::fs::remove_file(&temp);
        match outcome? {
            None => Ok(Taken::Yes(Lease {
                path: path.to_path_buf(),
                token,
            })),
            Some(other) => Ok(Taken::HeldBy(other)),
        }
    }

    /// Who holds the lease at `path`, if anyone (an expired lease still
    /// names its last holder).
    pub fn holder(path: &Path) -> Option<Holder> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

impl Drop for Lease {
    /// Removes the lease file if it is still ours (it is, unless it
    /// expired and another node took it over).
    fn drop(&mut self) {
        if Lease::holder(&self.path).is_some_and(|h| h.token == self.token) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Links `temp` in at `path`; `Ok(None)` when that made it ours, else the
/// live holder. A few rounds: clearing an expired lease takes one.
fn take(path: &Path, temp: &Path, now: i64) -> Result<Option<Holder>, StoreError> {
    for _ in 0..3 {
        match std::fs::hard_link(temp, path) {
            Ok(()) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(path, e)),
        }
        let Some(seen) = read_holder(path)? else {
            continue; // released meanwhile
        };
        if let Some(h) = seen.holder.as_ref().filter(|h| h.expires > now) {
            return Ok(Some(h.clone()));
        }
        // Expired (or unreadable): move it aside, and make sure what moved
        // is what was judged, not a lease another node took just now.
        let aside = sibling(path, &super::random_hex(), "stale");
        match std::fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(path, e)),
        }
        let moved = std::fs::read(&aside).map_err(|e| io_error(&aside, e));
        let same = moved.as_ref().is_ok_and(|m| *m == seen.bytes);
        if !same {
            // A live lease: put it back (unless yet another appeared).
            let _ = std::fs::hard_link(&aside, path);
        }
        let _ = std::fs::remove_file(&aside);
        if !same {
            let holder = moved
                .ok()
                .and_then(|m| serde_json::from_slice(&m).ok())
                .unwrap_or_else(|| someone(now));
            return Ok(Some(holder));
        }
    }
    Ok(Some(someone(now)))
}

/// A holder we could not read: the lease changed hands while we looked.
fn someone(now: i64) -> Holder {
    Holder {
        owner: "another node".into(),
        token: String::new(),
        expires: now,
    }
}

struct Seen {
    bytes: Vec<u8>,
    /// `None`: not a lease file (damaged); treated as expired.
    holder: Option<Holder>,
}

fn read_holder(path: &Path) -> Result<Option<Seen>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let holder = serde_json::from_slice(&bytes).ok();
            Ok(Some(Seen { bytes, holder }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, e)),
    }
}

fn sibling(path: &Path, token: &str, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{token}.{what}"))
}

fn write_new(path: &Path, holder: &Holder) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(holder).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(&bytes)?;
    f.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(900);

    fn take_at(path: &Path, owner: &str, now: i64) -> Taken {
        Lease::try_take(path, owner, TTL, now).unwrap()
    }

    #[test]
    fn one_holder_at_a_time_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.example.lock");
        let Taken::Yes(lease) = take_at(&path, "node-a", 1000) else {
            panic!("a free lease is taken");
        };
        match take_at(&path, "node-b", 1001) {
            Taken::HeldBy(h) => {
                assert_eq!(h.owner, "node-a");
                assert_eq!(h.expires, 1900);
            }
            Taken::Yes(_) => panic!("a held lease must not be taken twice"),
        }
        drop(lease);
        assert!(!path.exists(), "released");
        assert!(matches!(take_at(&path, "node-b", 1002), Taken::Yes(_)));
        // Nothing but the lease itself is left in the folder.
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 0, "released on drop, no temporary left");
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_its_holder_cannot_release_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.example.lock");
        let Taken::Yes(dead) = take_at(&path, "node-a", 1000) else {
            panic!()
        };
        let Taken::Yes(live) = take_at(&path, "node-b", 1000 + 901) else {
            panic!("an expired lease is taken over");
        };
        drop(dead);
        assert_eq!(Lease::holder(&path).unwrap().owner, "node-b");
        drop(live);
        assert!(!path.exists());
    }

    #[test]
    fn a_damaged_lease_file_counts_as_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.example.lock");
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(take_at(&path, "node-a", 1000), Taken::Yes(_)));
    }

    #[test]
    fn racing_threads_get_one_lease() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.lock");
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || {
                        match Lease::try_take(path, &format!("t{i}"), TTL, 1000).unwrap() {
                            Taken::Yes(lease) => {
                                std::mem::forget(lease); // keep it held
                                true
                            }
                            Taken::HeldBy(_) => false,
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    }
}
