//! `bsfg-bench key-index`: what the node's idempotency key index costs per
//! fact, alone, through its public API (`bsfg::store::key_index`), as the
//! index grows. The index writer thread records acknowledged facts in
//! batches (`record`), and every append looks its key up first (`look_up`,
//! almost always a miss); both run on the node's two cores beside the RPC
//! stack, so their CPU per fact is what they take from AppendFact and the
//! replicator.
//!
//! Keys are the node's own tokens (digests of `from_zone`/`message_id`),
//! offsets ascend, one category. CPU is the process's user+system time
//! around the index's calls only (making the tokens is not counted), so it
//! includes the merges of the buffered entries into the pages (when the
//! buffer is full, `--buffered`); the file is also merged and checkpointed
//! (fsynced, and the table grown) every `--sync-interval-ms`, as the
//! writer does every `key_index_sync_interval`.

use crate::child::scopeguard;
use bsfg::store::key_index::{KeyIndex, Token, token_bytes};
use bsfg_domain::identity::key_token;
use bsfg_testkit::procfs::cpu_seconds;
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
    /// Entries per record call (the writer thread's batch maximum is 8192).
    #[arg(long, default_value_t = 8192)]
    batch: u64,
    /// Look-ups per measurement (misses, then hits).
    #[arg(long, default_value_t = 100_000)]
    lookups: u64,
    /// The key filter's size (`[commit] key_filter_bytes`).
    #[arg(long, default_value_t = bsfg::store::key_index::FILTER_BYTES_DEFAULT)]
    filter_bytes: usize,
    /// Merge and make the file durable this often, as the writer thread
    /// does every `key_index_sync_interval` (5 min by default).
    #[arg(long, default_value_t = 300_000)]
    sync_interval_ms: u64,
    /// After the growth steps: record at this steady rate (entries/s, in
    /// batches every 10 ms as the writer thread does) and report CPU and
    /// disk bytes written per entry. 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    paced_rate: u64,
    /// Entries the index buffers in memory before merging them into its
    /// pages (the node's `key_index_buffered_facts_max`).
    #[arg(long, default_value_t = bsfg::store::key_index::BUFFERED_ENTRIES_MAX_DEFAULT)]
    buffered: usize,
    /// Seconds of the paced phase.
    #[arg(long, default_value_t = 30)]
    paced_seconds: u64,
}

/// The token the node derives for message `n` of a made-up zone: the
/// same digest an AppendFact's key gets (`bsfg_domain::identity::key_token`).
fn token(kind: &str, n: u64) -> Token {
    token_bytes(&key_token("bench", &format!("{kind}-{n}"))).expect("key tokens are 32 hex digits")
}

pub fn run(a: KeyIndexArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.step > 0 && a.batch > 0 && a.entries >= a.step,
        "--entries must be at least --step, and both --step and --batch above 0"
    );
    let dir = std::env::temp_dir().join(format!("bsfg-bench-key-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = scopeguard(dir.clone());
    let path = dir.join("key-index.kix");
    let index = open_index(&path, &a)?;
    let me = std::process::id();
    let mut md = format!(
        "### Key index alone (`bsfg-bench key-index --entries {} --batch {} --sync-interval-ms {}`)\n\n| Index size (entries) | record CPU µs/entry | look-up miss CPU µs/key | look-up hit CPU µs/key | file MiB |\n|---|---|---|---|---|\n",
        a.entries, a.batch, a.sync_interval_ms
    );
    let mut offset = grow(&index, &a, &path, me, &mut md)?;
    if a.paced_rate > 0 {
        let (cpu_us, disk_bytes) = paced(&index, &a, &mut offset, me)?;
        let _ = writeln!(
            md,
            "\nThen {} s at {} entries/s (batches every 10 ms, sync every {} ms), from {} entries: record {cpu_us:.2} µs of CPU and **{:.0} bytes written to disk per entry** (`/proc/self/io` write_bytes).",
            a.paced_seconds, a.paced_rate, a.sync_interval_ms, a.entries, disk_bytes
        );
    }
    // Start-up: a node's restart reopens the cleanly closed file and loads
    // the filter saved beside it; without that copy (after a crash, or if
    // it was lost) it reads every page once to fill the filter. Each once
    // with the files in the page cache and once after evicting them (a
    // restart after a reboot).
    drop(index);
    let (saved_warm_ms, entries) = reopen_ms(&path, &a, true, false)?;
    let (saved_cold_ms, _) = reopen_ms(&path, &a, true, true)?;
    let (pages_warm_ms, _) = reopen_ms(&path, &a, false, false)?;
    let (pages_cold_ms, _) = reopen_ms(&path, &a, false, true)?;
    let _ = writeln!(
        md,
        "\nReopening the cleanly closed file ({entries} entries in its pages, {:.0} MiB): with the key filter saved at the close, {saved_warm_ms:.0} ms with the files in the page cache and {saved_cold_ms:.0} ms after evicting them (`posix_fadvise` DONTNEED); without it (reading every page once to fill the filter, as after a crash), {pages_warm_ms:.0} ms and {pages_cold_ms:.0} ms.",
        std::fs::metadata(&path)?.len() as f64 / (1024.0 * 1024.0)
    );
    println!("{md}");
    Ok(())
}

/// The benchmarked index's root seed: fixed, so runs place the same
/// tokens in the same buckets.
const BENCH_HASH_KEY_SEED: u64 = 0xB5F6;

/// The benchmarked index at `path`: one category, as configured.
fn open_index(path: &std::path::Path, a: &KeyIndexArgs) -> anyhow::Result<KeyIndex> {
    KeyIndex::open(
        path,
        &["operational".to_string()],
        a.buffered,
        a.filter_bytes,
        BENCH_HASH_KEY_SEED,
    )
}

/// Fills the index to `a.entries`, a step at a time, and adds a row per
/// step (record, miss and hit CPU, file size) to `md`. Returns the offset
/// reached.
fn grow(
    index: &KeyIndex,
    a: &KeyIndexArgs,
    path: &std::path::Path,
    me: u32,
    md: &mut String,
) -> anyhow::Result<u64> {
    let mut offset = 0u64;
    let sync_interval = std::time::Duration::from_millis(a.sync_interval_ms);
    let mut last_sync = Instant::now();
    while offset < a.entries {
        let (step_start, step_end) = (offset, (offset + a.step).min(a.entries));
        let record_cpu_s = record_step(
            index,
            a,
            &mut offset,
            step_end,
            sync_interval,
            &mut last_sync,
            me,
        )?;
        let record_us = record_cpu_s * 1e6 / (offset - step_start) as f64;
        let (miss_us, hit_us) = look_up_step(index, a, offset, me)?;
        let file_mib = std::fs::metadata(path)?.len() as f64 / (1024.0 * 1024.0);
        eprintln!(
            "{offset} entries: record {record_us:.2} µs/entry, miss {miss_us:.2} µs, hit {hit_us:.2} µs, file {file_mib:.0} MiB"
        );
        let _ = writeln!(
            md,
            "| {offset} | {record_us:.2} | {miss_us:.2} | {hit_us:.2} | {file_mib:.0} |"
        );
    }
    Ok(offset)
}

/// Records entries in batches up to `step_end`, syncing every interval;
/// returns the CPU seconds the index's calls took.
fn record_step(
    index: &KeyIndex,
    a: &KeyIndexArgs,
    offset: &mut u64,
    step_end: u64,
    sync_interval: std::time::Duration,
    last_sync: &mut Instant,
    me: u32,
) -> anyhow::Result<f64> {
    // Only the index's calls are timed; making the tokens is not.
    let mut record_cpu_s = 0.0;
    while *offset < step_end {
        let n = a.batch.min(step_end - *offset);
        let entries: Vec<(usize, Token, u64)> = (*offset + 1..=*offset + n)
            .map(|o| (0, token("stored", o), o))
            .collect();
        let cpu_before = cpu_seconds(me);
        index.record(&entries, &[])?;
        if last_sync.elapsed() >= sync_interval {
            index.sync()?;
            *last_sync = Instant::now();
        }
        record_cpu_s += cpu_seconds(me) - cpu_before;
        *offset += n;
    }
    Ok(record_cpu_s)
}

/// Times look-ups at `offset` entries; returns the miss and hit CPU µs
/// per key, having checked that no miss and every hit was found.
fn look_up_step(
    index: &KeyIndex,
    a: &KeyIndexArgs,
    offset: u64,
    me: u32,
) -> anyhow::Result<(f64, f64)> {
    // Misses: keys never stored. Hits: keys of this step, again.
    let misses: Vec<Token> = (0..a.lookups)
        .map(|n| token(&format!("absent{offset}"), n))
        .collect();
    let hits: Vec<Token> = (offset - a.lookups.min(offset) + 1..=offset)
        .map(|o| token("stored", o))
        .collect();
    let (miss_us, missed_found) = time_look_ups(index, &misses, me)?;
    anyhow::ensure!(
        missed_found == 0,
        "{missed_found} keys never stored were found in the index"
    );
    let (hit_us, hits_found) = time_look_ups(index, &hits, me)?;
    anyhow::ensure!(
        hits_found == hits.len(),
        "only {hits_found} of {} stored keys were found",
        hits.len()
    );
    Ok((miss_us, hit_us))
}

/// Reopens the closed index (first removing the saved filter unless
/// `with_saved_filter`, first evicting the files from the page cache if
/// `cold`); returns the milliseconds it took and the entries it holds.
fn reopen_ms(
    path: &std::path::Path,
    a: &KeyIndexArgs,
    with_saved_filter: bool,
    cold: bool,
) -> anyhow::Result<(f64, u64)> {
    let saved_filter = std::path::PathBuf::from(format!("{}.filter", path.display()));
    if !with_saved_filter {
        std::fs::remove_file(&saved_filter)?;
    }
    if cold {
        evict_from_page_cache(path)?;
        if with_saved_filter {
            evict_from_page_cache(&saved_filter)?;
        }
    }
    let started = Instant::now();
    let reopened = open_index(path, a)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let entries = reopened.size().entries;
    anyhow::ensure!(entries > 0, "the reopened index lost its entries");
    // Dropped cleanly: the filter is saved again for the next reopen.
    Ok((ms, entries))
}

/// Drops a (clean, fsynced) file's pages from the OS page cache.
fn evict_from_page_cache(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path)?;
    // SAFETY: an advisory call on a file descriptor this function owns;
    // no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise failed: {rc}");
    Ok(())
}

/// Records at a steady rate as the writer thread does (a batch every
/// 10 ms, a sync every interval); returns CPU µs and disk bytes written
/// per entry.
fn paced(
    index: &KeyIndex,
    a: &KeyIndexArgs,
    offset: &mut u64,
    me: u32,
) -> anyhow::Result<(f64, f64)> {
    let tick = std::time::Duration::from_millis(10);
    let per_tick = (a.paced_rate / 100).max(1);
    let sync_interval = std::time::Duration::from_millis(a.sync_interval_ms);
    // Start from a durable file, so only this phase's writes are counted.
    index.sync()?;
    let (cpu_before, bytes_before, first) = (cpu_seconds(me), written_bytes()?, *offset);
    let start = Instant::now();
    let mut last_sync = start;
    let mut next = start;
    while start.elapsed().as_secs() < a.paced_seconds {
        let entries: Vec<(usize, Token, u64)> = (*offset + 1..=*offset + per_tick)
            .map(|o| (0, token("stored", o), o))
            .collect();
        index.record(&entries, &[])?;
        *offset += per_tick;
        if last_sync.elapsed() >= sync_interval {
            index.sync()?;
            last_sync = Instant::now();
        }
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    index.sync()?;
    let n = (*offset - first) as f64;
    Ok((
        (cpu_seconds(me) - cpu_before) * 1e6 / n,
        (written_bytes()? - bytes_before) as f64 / n,
    ))
}

/// Bytes this process has caused to be written to storage.
fn written_bytes() -> anyhow::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io")?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no write_bytes in /proc/self/io"))
}

/// CPU µs per key of single-key look-ups (as each append round makes),
/// and how many were found.
fn time_look_ups(index: &KeyIndex, tokens: &[Token], me: u32) -> anyhow::Result<(f64, usize)> {
    let cpu_before = cpu_seconds(me);
    let mut found = 0;
    for t in tokens {
        found += index
            .look_up(std::slice::from_ref(t))?
            .iter()
            .flatten()
            .count();
    }
    Ok((
        (cpu_seconds(me) - cpu_before) * 1e6 / tokens.len().max(1) as f64,
        found,
    ))
}
