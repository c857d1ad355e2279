//! The `bsfg` binary: the command line ([`bsfg_cli::cli`]) with the demo
//! ([`bsfg_cli::demo`]) plugged in as `bsfg demo`.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    bsfg_cli::cli::main(|dir, single_zone, ha| Box::pin(bsfg_cli::demo::run(dir, single_zone, ha)))
}

/// glibc gives every thread that allocates its own malloc arena (up to
/// 8 x cores) and keeps freed memory in each; with the runtime's worker
/// and blocking threads and the key index's page buffers the node's RSS
/// crept up with the index size (54 MiB after a 5 s bench phase, 46 MiB
/// with two arenas). Two arenas bound that at a small cost in contention.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
