//! Loopback ports picked now for a server that binds them a moment later
//! (the demo's zones, an embedded nats-server on `port = 0`, tests).
//!
//! Picking a port and binding it are two steps, so two pickers can choose the
//! same port in between, or a kernel-chosen local port can take it. Three
//! rules close those races:
//! - Ports come from *below* Linux's default ephemeral range (32768–60999):
//!   a `bind(0)` or an outgoing connection never takes its local port there.
//! - A port this process handed out is never handed out again by it.
//! - A port is reserved across processes by an exclusive lock on a file named
//!   after it in the system's temporary directory, held until this process
//!   exits; another process skips a port whose file is locked. (The kernel
//!   drops the lock when the process ends, however it ends, so nothing leaks.)

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;

/// The range ports are picked from: below the ephemeral range, above the
/// ports that well-known services listen on.
const PICK_RANGE: std::ops::Range<u16> = 20_000..32_000;
/// How many random ports are tried before giving up; at 12,000 candidates a
/// failure means the range is exhausted, not bad luck.
const PICK_ATTEMPTS_MAX: usize = 256;

/// Ports handed out by this process, with the lock files that reserve them.
static RESERVED: Mutex<Option<Reserved>> = Mutex::new(None);

#[derive(Default)]
struct Reserved {
    ports: HashSet<u16>,
    /// Kept open for the life of the process: closing one drops its lock.
    locks: Vec<File>,
}

/// A loopback port that is free now and reserved for this process.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let reserved = reserved.get_or_insert_with(Reserved::default);
    for _ in 0..PICK_ATTEMPTS_MAX {
        let port = rng.random_range(PICK_RANGE);
        if reserved.ports.contains(&port) {
            continue;
        }
        let Some(lock) = lock_port(port)? else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // in use by something that does not take part in locking
        }
        reserved.ports.insert(port);
        reserved.locks.push(lock);
        return Ok(port);
    }
    anyhow::bail!("no free loopback port in {PICK_RANGE:?} after {PICK_ATTEMPTS_MAX} tries")
}

/// Locks the port's reservation file; `None` if another process holds it.
fn lock_port(port: u16) -> anyhow::Result<Option<File>> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("bsfg-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice_and_is_locked_against_other_processes() {
        let ports: Vec<u16> = (0..64).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(PICK_RANGE.contains(&port));
            // A second open file description stands for another process.
            let other = File::open(lock_dir().join(port.to_string())).unwrap();
            assert!(matches!(
                other.try_lock(),
                Err(std::fs::TryLockError::WouldBlock)
            ));
        }
    }
}
