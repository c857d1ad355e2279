//! `bsfg-bench key-index`: what the node's idempotency key index costs per
//! fact, alone, through its public API (`bsfg::store::key_index`), as the
//! index grows. The index writer thread records acknowledged facts in
//! batches (`record`), and every append looks its key up first (`look_up`,
//! almost always a miss); both run on the node's two cores beside the RPC
//! stack, so their CPU per fact is what they take from AppendFact and the
//! replicator.
//!
//! Keys are random 16-byte tokens (the node's are digests of
//! `from_zone`/`message_id`), offsets ascend, one category. CPU is the
//! process's user+system time (this command runs nothing else), so it
//! includes the page-cache writes of each non-durable commit; the file is
//! fsynced every `--sync-interval-ms`, as the writer does every
//! `key_index_sync_interval`.

use super::cpu_seconds;
use bsfg::store::key_index::{KeyIndex, Token};
use std::fmt::Write as _;
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct KeyIndexArgs {
    /// Entries recorded in total.
    #[arg(long, default_value_t = 2_000_000)]
    entries: u64,
    /// Entries per report line.
    #[arg(long, default_value_t = 500_000)]
    step: u64,
    /// Entries per write transaction (the writer thread's batch maximum is 8192).
    #[arg(long, default_value_t = 8192)]
    batch: u64,
    /// Page cache of the index in MiB (the node's default `key_index_cache_bytes` is 8 MiB).
    #[arg(long, default_value_t = 8)]
    cache_mib: usize,
    /// Look-ups per measurement (misses, then hits).
    #[arg(long, default_value_t = 100_000)]
    lookups: u64,
    /// Make the file durable this often, as the writer thread does every
    /// `key_index_sync_interval` (1 s by default).
    #[arg(long, default_value_t = 1000)]
    sync_interval_ms: u64,
}

/// xorshift64: reproducible tokens without a dependency.
struct Tokens(u64);

impl Tokens {
    fn next(&mut self) -> Token {
        let mut token = [0u8; 16];
        for chunk in token.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes());
        }
        token
    }
}

pub fn run(a: KeyIndexArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.step > 0 && a.batch > 0 && a.entries >= a.step, "--entries must be at least --step, and both --step and --batch above 0");
    let dir = std::env::temp_dir().join(format!("bsfg-bench-key-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = super::scopeguard(dir.clone());
    let path = dir.join("key-index.redb");
    let index = KeyIndex::open(&path, a.cache_mib << 20, &["operational".to_string()])?;
    let me = std::process::id();
    let mut recorded_tokens = Tokens(0x9e37_79b9_7f4a_7c15);
    let mut md = format!(
        "### Key index alone (`bsfg-bench key-index --entries {} --batch {} --cache-mib {} --sync-interval-ms {}`)\n\n| Index size (entries) | record CPU µs/entry | look-up miss CPU µs/key | look-up hit CPU µs/key | file MiB |\n|---|---|---|---|---|\n",
        a.entries, a.batch, a.cache_mib, a.sync_interval_ms
    );
    let mut offset = 0u64;
    let sync_interval = std::time::Duration::from_millis(a.sync_interval_ms);
    let mut last_sync = Instant::now();
    while offset < a.entries {
        let step_end = (offset + a.step).min(a.entries);
        let (cpu_before, started) = (cpu_seconds(me), Instant::now());
        while offset < step_end {
            let n = a.batch.min(step_end - offset);
            let entries: Vec<(usize, Token, u64)> = (1..=n).map(|i| (0, recorded_tokens.next(), offset + i)).collect();
            index.record(&entries, &[])?;
            offset += n;
            if last_sync.elapsed() >= sync_interval {
                index.sync()?;
                last_sync = Instant::now();
            }
        }
        let record_us = (cpu_seconds(me) - cpu_before) * 1e6 / a.step as f64;
        let wall_s = started.elapsed().as_secs_f64();
        // Misses: fresh tokens. Hits: tokens recorded in this step, replayed.
        let mut misses = Tokens(offset ^ 0x5555_5555);
        let cpu_before = cpu_seconds(me);
        let mut found = 0u64;
        for _ in 0..a.lookups {
            found += index.look_up(&[misses.next()])?.iter().flatten().count() as u64;
        }
        let miss_us = (cpu_seconds(me) - cpu_before) * 1e6 / a.lookups as f64;
        anyhow::ensure!(found == 0, "{found} random tokens were found in the index");
        let mut hits = Tokens(0x9e37_79b9_7f4a_7c15);
        let cpu_before = cpu_seconds(me);
        let probes = a.lookups.min(offset);
        for _ in 0..probes {
            found += index.look_up(&[hits.next()])?.iter().flatten().count() as u64;
        }
        let hit_us = (cpu_seconds(me) - cpu_before) * 1e6 / probes as f64;
        anyhow::ensure!(found == probes, "only {found} of {probes} recorded tokens were found");
        let file_mib = std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0);
        eprintln!("{offset} entries: record {record_us:.2} µs/entry ({wall_s:.1} s wall), miss {miss_us:.2} µs, hit {hit_us:.2} µs, file {file_mib:.0} MiB");
        let _ = writeln!(md, "| {offset} | {record_us:.2} | {miss_us:.2} | {hit_us:.2} | {file_mib:.0} |");
    }
    println!("{md}");
    Ok(())
}
