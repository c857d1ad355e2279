//! Child processes that do not outlive their parent: the kernel sends the
//! child SIGTERM when the thread that started it ends, even if the parent
//! was killed with SIGKILL (Linux `PR_SET_PDEATHSIG`). The node's embedded
//! nats-server is started this way, and so are the processes `bsfg demo`
//! starts.
//!
//! The signal follows the *thread* that spawned the child: spawn from a
//! thread that lives as long as the child should (the main thread or a
//! runtime worker), not from a short-lived blocking-pool thread.

use std::os::unix::process::CommandExt as _;

/// Makes the process `command` starts receive SIGTERM when its parent
/// (the spawning thread) dies.
pub fn tie_to_parent(command: &mut std::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches no Rust state.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
