//! How every input file is read: the configuration and projects, the
//! certificates, keys and CA bundles, the token and password files, the
//! geo databases and the user-agent rules.
//!
//! Only a regular file (after following symlinks) is read, and it is
//! opened without blocking: opening a FIFO for reading waits for a writer,
//! so a FIFO put in place of `projects.toml` once wedged the reload thread
//! for good (issue "[hardening-3]"). A FIFO, socket, device or directory is
//! refused with its kind, like any bad file. The TOML files are read up to
//! [`TOML_LIMIT`]; a larger one is refused rather than read into memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest configuration or projects file read (16 MiB): thousands of
/// projects fit in a small fraction of it.
pub const TOML_LIMIT: u64 = 16 * 1024 * 1024;

/// Reads `path` whole if it is a regular file of at most `limit` bytes.
pub fn read(path: &Path, limit: Option<u64>) -> io::Result<Vec<u8>> {
    let file = open(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::new();
    match limit {
        Some(limit) => {
            // The length may change while the file is read: `take` bounds
            // what is read, whatever `len` said.
            file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("larger than {limit} bytes"),
                ));
            }
        }
        None => {
            bytes.reserve_exact(usize::try_from(len).unwrap_or(0));
            let mut file = file;
            file.read_to_end(&mut bytes)?;
        }
    }
    Ok(bytes)
}

/// [`read`] for text: the file must be UTF-8.
pub fn read_to_string(path: &Path, limit: Option<u64>) -> io::Result<String> {
    String::from_utf8(read(path, limit)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Opens `path` for reading without blocking, and checks what it is.
fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file ({what})"),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE: unwrap is allowed in tests
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("projects.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        assert_eq!(read_to_string(&file, Some(TOML_LIMIT)).unwrap(), "x = 1\n");
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link, None).unwrap(), b"x = 1\n");

        let fifo = dir.path().join("fifo.toml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Returns at once: the open does not wait for a writer.
        let e = read(&fifo, None).unwrap_err().to_string();
        assert_eq!(e, "not a regular file (a FIFO)");
        let e = read(dir.path(), None).unwrap_err().to_string();
        assert_eq!(e, "not a regular file (a directory)");
        let e = read(Path::new("/dev/zero"), Some(10))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "not a regular file (a device)");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.toml");
        std::fs::write(&file, vec![b'#'; 11]).unwrap();
        assert_eq!(read(&file, Some(11)).unwrap().len(), 11);
        let e = read(&file, Some(10)).unwrap_err().to_string();
        assert_eq!(e, "larger than 10 bytes");
        std::fs::write(&file, [0xff, 0xfe]).unwrap();
        let e = read_to_string(&file, None).unwrap_err().to_string();
        assert_eq!(e, "not UTF-8 text");
    }
}
