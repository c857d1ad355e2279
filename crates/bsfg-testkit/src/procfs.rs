//! A process's memory and CPU as Linux reports them in `/proc/<pid>`, for
//! the benchmarks' tables and the tests' memory bounds. A process that is
//! gone, or a field that cannot be read, reads as zero.

/// Resident memory of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// The peak so far (`VmHWM`), or since [`reset_peak_rss`].
    pub peak_kib: u64,
    /// Now (`VmRSS`).
    pub resident_kib: u64,
}

/// `VmHWM` and `VmRSS` of `/proc/<pid>/status`.
pub fn rss(pid: u32) -> Rss {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        peak_kib: field("VmHWM:"),
        resident_kib: field("VmRSS:"),
    }
}

/// Resets a process's `VmHWM` to its current RSS (`/proc/<pid>/clear_refs`
/// = 5), so the next reading is the peak of what follows; best effort.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Clock ticks a second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU time of a process so far (fields 14 and 15 of
/// `/proc/<pid>/stat`), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is the first, utime the twelfth.
    let after = text.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND
}
