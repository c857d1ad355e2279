//! Files and directories that only the node's own user may read or write.
//!
//! Why: the key index holds the secret SipHash key its hashes are keyed
//! with (with it, anyone can craft message ids that land in one page), its
//! saved filter is bound to that key, and the embedded nats-server's config
//! and log describe the zone store. None of them is meant for other users
//! of the machine, so they are created `0600` and their directories `0700`.
//! A mode given at creation does not change an existing file, so files are
//! also set to `0600` when the node opens them (an upgrade from a version
//! that created them world-readable).

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Read and write for the owner only.
pub const FILE_MODE: u32 = 0o600;
/// Search, read and write for the owner only.
pub const DIR_MODE: u32 = 0o700;

/// Open options that create a missing file with [`FILE_MODE`].
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Sets an open file (new or existing) to [`FILE_MODE`].
pub fn restrict(file: &File) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(FILE_MODE))
}

/// Creates `dir` and any missing parents with [`DIR_MODE`]; existing
/// directories keep their mode.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates `dir` (as [`create_dir_all`]) and sets it to [`DIR_MODE`] even if
/// it existed: for directories that belong to the node alone.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    create_dir_all(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Writes `contents` to `path` (created or truncated) with [`FILE_MODE`].
pub fn write(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut file = open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    restrict(&file)?;
    file.write_all(contents)
}
