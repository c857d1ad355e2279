//! Free space of the filesystems the node's store writes to, and the floor
//! below which appends are refused (`resource_exhausted` / `disk_full`).
//!
//! Why: a filesystem that fills under nats-server does not fail cleanly.
//! Appends waited the whole request timeout and were answered
//! `store_unavailable` without saying why, nats-server kept failing writes
//! after space was freed, and its own log, on the same disk, said nothing.
//! Refusing at a floor keeps the disk from filling through the node: the
//! refusal is immediate and names the filesystem, and what is already
//! stored stays readable, fetchable and confirmable.
//!
//! Watched: the embedded nats-server's store directory (`[nats]
//! store_dir`) and the key index file's directory. An external
//! nats-server's disk is on another host, or at least not known to the
//! node: only the key index's filesystem is watched then (watch the
//! server's disk there).
//!
//! The floor is absolute (`[nats] store_free_bytes_min`, 256 MiB by
//! default), not a percentage: what has to fit below it does not grow with
//! the disk (the appends in flight when the floor is crossed, at most
//! `batches_in_flight_max × batch_facts_max` facts; nats-server's own
//! writes: consumer state, index and compaction of block files, its log;
//! the key index's merge and growth; an upload in progress), and a
//! percentage wastes tens of GiB on a large disk while leaving too little
//! on a small one.

use crate::metrics::{Metrics, labels};
use bsfg_domain::{Code, Reason, Rejection};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the free space is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Free bytes not known (never read, or statvfs failed): not refused.
const UNKNOWN: u64 = u64::MAX;

/// One watched filesystem, by the role of what the node keeps on it.
struct Watched {
    /// `store` or `key_index` (the metric label).
    role: &'static str,
    /// What lives there (a message's words).
    what: &'static str,
    path: PathBuf,
    free: AtomicU64,
    below: AtomicBool,
}

pub struct DiskWatch {
    floor: u64,
    watched: Vec<Watched>,
    metrics: Arc<Metrics>,
}

impl DiskWatch {
    /// Watches `store_dir` (None: an external server, not watched) and the
    /// key index file's filesystem; reads them once before returning, so
    /// the first append is already judged.
    pub fn new(
        store_dir: Option<&Path>,
        key_index: &Path,
        floor: u64,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut watched = Vec::new();
        let mut watch = |role, what, path: &Path| {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            watched.push(Watched {
                role,
                what,
                path,
                free: AtomicU64::new(UNKNOWN),
                below: AtomicBool::new(false),
            });
        };
        match store_dir {
            Some(dir) => watch("store", "the zone store", dir),
            None => tracing::info!(
                key_index = %key_index.display(),
                "the zone store is on an external nats-server: the node cannot watch its disk (watch it on the server's host); only the key index's filesystem is watched"
            ),
        }
        watch("key_index", "the key index", key_index);
        let disk = Arc::new(Self {
            floor,
            watched,
            metrics,
        });
        disk.poll();
        disk
    }

    /// Reads the free space of every watched filesystem, updates the
    /// metrics and logs each crossing of the floor.
    pub fn poll(&self) {
        for w in &self.watched {
            let free = match free_bytes(&w.path) {
                Ok(free) => free,
                Err(e) => {
                    if w.free.swap(UNKNOWN, Ordering::AcqRel) != UNKNOWN {
                        tracing::warn!(filesystem = w.role, path = %w.path.display(), error = %e, "cannot read the free space of a watched filesystem; not refusing appends on its account");
                    }
                    UNKNOWN
                }
            };
            w.free.store(free, Ordering::Release);
            let below = free != UNKNOWN && free < self.floor;
            if free != UNKNOWN {
                self.metrics
                    .store_free_bytes
                    .get_or_create(&labels(&[
                        ("filesystem", w.role),
                        ("path", &w.path.display().to_string()),
                    ]))
                    .set(free.min(i64::MAX as u64) as i64);
            }
            if w.below.swap(below, Ordering::AcqRel) != below {
                if below {
                    tracing::warn!(filesystem = w.role, path = %w.path.display(), free_bytes = free, floor_bytes = self.floor, "free space below the floor ([nats] store_free_bytes_min): appends are refused (disk_full) until space is freed");
                } else {
                    tracing::warn!(filesystem = w.role, path = %w.path.display(), free_bytes = free, floor_bytes = self.floor, "free space back above the floor: appends accepted again");
                }
            }
        }
        self.metrics.disk_full.set(i64::from(self.full().is_some()));
    }

    /// The first watched filesystem below the floor: (role, path, free).
    fn below_floor(&self) -> Option<&Watched> {
        self.watched
            .iter()
            .find(|w| w.below.load(Ordering::Acquire))
    }

    /// A one-line reason while some watched filesystem is below the floor.
    pub fn full(&self) -> Option<String> {
        self.below_floor().map(|w| {
            format!(
                "the filesystem holding {} ({}) has {} bytes free, below the floor of {} bytes ([nats] store_free_bytes_min)",
                w.what,
                w.path.display(),
                w.free.load(Ordering::Acquire),
                self.floor
            )
        })
    }

    /// `disk_full` while some watched filesystem is below the floor.
    pub fn check(&self) -> Result<(), Rejection> {
        match self.full() {
            None => Ok(()),
            Some(why) => Err(Rejection::new(
                Code::ResourceExhausted,
                Reason::DiskFull,
                format!(
                    "{why}; appends are refused until space is freed (what is stored stays readable and confirmable), retry with backoff"
                ),
            )),
        }
    }

    /// Free bytes of the store's filesystem (None: not watched or unknown).
    pub fn store_free(&self) -> Option<u64> {
        self.watched
            .iter()
            .find(|w| w.role == "store")
            .map(|w| w.free.load(Ordering::Acquire))
            .filter(|f| *f != UNKNOWN)
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Polls every `POLL_INTERVAL` until the watch is dropped.
    pub fn spawn_poller(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(disk) = weak.upgrade() else { return };
                // statvfs may block (a network filesystem).
                if tokio::task::spawn_blocking(move || disk.poll())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// Bytes available to the node on the filesystem holding `path` (or its
/// nearest existing ancestor: a key index not created yet).
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let c_path =
        std::ffi::CString::new(existing.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs owned here.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_floor_and_names_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let index = dir.path().join("not-yet/keys.kix");
        let open = DiskWatch::new(Some(dir.path()), &index, 0, metrics.clone());
        assert!(open.check().is_ok());
        assert!(open.store_free().is_some_and(|f| f > 0));
        let full = DiskWatch::new(Some(dir.path()), &index, u64::MAX - 1, metrics.clone());
        let refused = full.check().unwrap_err();
        assert_eq!(
            (refused.code, refused.reason),
            (Code::ResourceExhausted, Reason::DiskFull)
        );
        assert!(
            refused.message.contains(&dir.path().display().to_string())
                && refused.message.contains("the zone store"),
            "{}",
            refused.message
        );
        assert!(metrics.render().contains("bsfg_disk_full 1"));
        // External server: only the key index is watched.
        let external = DiskWatch::new(None, &index, u64::MAX - 1, metrics);
        assert!(
            external
                .check()
                .unwrap_err()
                .message
                .contains("the key index")
        );
        assert_eq!(external.store_free(), None);
    }
}
