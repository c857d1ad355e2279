//! Small things done to any child process: signalling it, and quoting the
//! end of its log when it fails to start.

use std::path::Path;

/// `kill -<signal_name> <pid>` (e.g. `STOP`, `CONT`), which must succeed.
pub fn signal(pid: u32, signal_name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal_name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal_name} {pid}: {status}");
    Ok(())
}

/// The last `lines_max` lines of a log file (empty if it cannot be read).
pub fn log_tail(path: &Path, lines_max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(lines_max)..].join("\n")
}
