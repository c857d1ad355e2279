//! A full disk: a zone whose embedded store (and key index) lives on a
//! small tmpfs the test mounts (as root) and fills with a file of its own.
//! Skipped, with the reason printed, where tmpfs cannot be mounted.

use crate::harness::*;
use bsfg::client::BsfgClient;
use bsfg::config::{NatsConfig, ZoneConfig};
use bsfg_testkit::zone_config::{ZoneConfigBuilder, bucket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A tmpfs mounted on a fresh directory; unmounted when dropped (also
/// when the test fails), lazily, so a server still closing its files
/// cannot keep it mounted.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (and the reason printed) where mounting is not possible.
    pub fn mount(size_mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { path, _dir: dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (root needed): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    pub fn free_bytes(&self) -> u64 {
        free_bytes(&self.path)
    }

    /// Writes `filler` until the filesystem has at most `leave` bytes free
    /// (0: until it is full); returns the bytes written.
    pub fn fill(&self, filler: &Path, leave: u64) -> u64 {
        fill(&self.path, filler, leave)
    }
}

/// Free bytes of the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a statvfs owned here.
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail * stat.f_frsize
}

/// Writes `filler` until the filesystem holding `dir` has at most `leave`
/// bytes free (0: until it is full); returns the bytes written.
pub fn fill(dir: &Path, filler: &Path, leave: u64) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(filler).unwrap();
    let chunk = vec![0x5a_u8; MIB as usize];
    let mut written = 0;
    loop {
        let free = free_bytes(dir);
        if free <= leave || (leave == 0 && free == 0) {
            break;
        }
        let n = (free - leave).min(MIB) as usize;
        match file.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(w) => written += w as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    written
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A zone with its own nats-server whose store directory and key index are
/// under `root`; plaintext-dev; small capacities so JetStream's
/// reservation fits a small filesystem.
pub fn embedded_config(root: &Path, floor: u64) -> ZoneConfig {
    let small = |mut c: bsfg::config::CategoryConfig| {
        c.capacity_bytes = 4 * MIB;
        c
    };
    let mut config = ZoneConfigBuilder::new(ZONE)
        .nats(NatsConfig {
            url: None,
            port: 0,
            store_dir: root.join("jetstream"),
            store_free_bytes_min: floor,
            ..NatsConfig::default()
        })
        .categories(vec![
            small(category("operational", &[], true)),
            small(category("audit", &["audit"], false)),
        ])
        .consumers(vec![consumer("mes", "operational")])
        .buckets(vec![bucket(BUCKET, 4 * MIB)])
        .build();
    // A small key filter: its saved copy lives on the small filesystem too.
    config.commit.key_filter_bytes = 1 << 20;
    config.check().expect("valid config");
    config
}

pub fn plain_client(node: &bsfg::node::RunningNode) -> BsfgClient {
    BsfgClient::connect(&format!("http://{}", node.boundary_addr)).unwrap()
}

/// Appends a fact (a new message_id from `next_id` each time: a retry of
/// a stored one would be answered before any check) every 100 ms until `done` says the answer is
/// the awaited one or `within` passes; returns the answer and when it came.
pub async fn append_until(
    client: &BsfgClient,
    mut next_id: impl FnMut() -> String,
    n: usize,
    within: Duration,
    done: impl Fn(&Result<bsfg_proto::bsfg::v1::AppendFactResponse, connectrpc::ConnectError>) -> bool,
) -> (
    Result<bsfg_proto::bsfg::v1::AppendFactResponse, connectrpc::ConnectError>,
    Duration,
) {
    let start = Instant::now();
    loop {
        let answer = client.append(envelope(&next_id()), batch_fact(n)).await;
        if done(&answer) || start.elapsed() > within {
            return (answer, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Below the free-space floor appends are refused `disk_full` at once,
/// naming the filesystem; a retry of a stored fact is still answered; once
/// the filler is deleted appends are accepted again, and the old
/// message_id is still a duplicate at its original offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_refused_below_the_free_space_floor_and_resume_when_space_is_freed() {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let floor = 16 * MIB;
    let node = bsfg::node::start(embedded_config(&fs.path, floor))
        .await
        .expect("the node starts on the tmpfs");
    let client = plain_client(&node);
    let first_id = mid("before-full");
    let first = client
        .append(envelope(&first_id), batch_fact(1))
        .await
        .expect("append with room");

    let filler = fs.path.join("filler");
    fs.fill(&filler, floor / 2);
    let (refused, after) = append_until(
        &client,
        || mid("while-full"),
        2,
        Duration::from_secs(5),
        |a| a.is_err(),
    )
    .await;
    assert!(
        after < Duration::from_millis(2500),
        "refused within a poll (1 s) of the fill, took {after:?}"
    );
    let e = refused.expect_err("refused while below the floor");
    let message = e.message.clone().unwrap_or_default();
    assert_eq!(e.code.as_str(), "resource_exhausted", "{message}");
    assert!(message.starts_with("disk_full"), "{message}");
    assert!(
        message.contains(&fs.path.display().to_string()) && message.contains(&floor.to_string()),
        "names the filesystem and the floor: {message}"
    );
    // At once, not after the request timeout.
    let started = Instant::now();
    assert_rejected(
        client
            .append(envelope(&mid("while-full")), batch_fact(3))
            .await,
        "resource_exhausted",
        "disk_full",
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, took {:?}",
        started.elapsed()
    );
    // A retry of a stored fact writes nothing and is still answered.
    let again = client
        .append(envelope(&first_id), batch_fact(1))
        .await
        .expect("a retry while full");
    assert_eq!((again.offset, again.duplicate), (first.offset, true));
    let metrics = node.metrics.render();
    assert_eq!(
        metric_value(&metrics, "bsfg_disk_full", &[]),
        Some(1.0),
        "{metrics}"
    );
    let free = metric_value(&metrics, "bsfg_store_free_bytes", &["filesystem=\"store\""])
        .expect("store free bytes exported");
    assert!(free < floor as f64, "{free}");

    std::fs::remove_file(&filler).unwrap();
    let (resumed, after) = append_until(
        &client,
        || mid("after-free"),
        4,
        Duration::from_secs(10),
        |a| a.is_ok(),
    )
    .await;
    let resumed = resumed.expect("appends accepted again after the filler is deleted");
    assert!(
        after < Duration::from_secs(3),
        "resumed within a few seconds, took {after:?}"
    );
    assert!(!resumed.duplicate && resumed.offset > first.offset);
    let again = client
        .append(envelope(&first_id), batch_fact(1))
        .await
        .expect("a retry after");
    assert_eq!(
        (again.offset, again.duplicate),
        (first.offset, true),
        "the key index still knows the old message_id"
    );
    assert_eq!(
        metric_value(&node.metrics.render(), "bsfg_disk_full", &[]),
        Some(0.0)
    );
    drop(client);
    drop(node);
    wait_until_key_index_closed(&fs.path.join("key-index.plant-a.kix")).await;
}

/// `/healthz` (readiness) and `/livez` (liveness) of a node.
pub async fn probe(node: &bsfg::node::RunningNode, path: &str) -> (u16, String) {
    let (status, body) = http_raw(node.ops_addr, "GET", path, "text/plain", b"")
        .await
        .expect("the ops port answers");
    (status, String::from_utf8(body).unwrap())
}

/// `/healthz` is 503 with the reason `disk_full` while the store's
/// filesystem is below its floor, 200 again once space is freed; `/livez`
/// is 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_not_ready_while_the_disk_is_below_its_floor_and_livez_stays_ok() {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let floor = 16 * MIB;
    let node = bsfg::node::start(embedded_config(&fs.path, floor))
        .await
        .expect("the node starts on the tmpfs");
    let ready_within = |within: Duration| {
        let node = &node;
        async move {
            let deadline = Instant::now() + within;
            loop {
                let answer = probe(node, "/healthz").await;
                if answer.0 == 200 || Instant::now() > deadline {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Ready once the key index has caught up.
    assert_eq!(
        ready_within(Duration::from_secs(10)).await,
        (200, "ok\n".to_string())
    );
    assert_eq!(probe(&node, "/livez").await, (200, "ok\n".to_string()));

    let filler = fs.path.join("filler");
    fs.fill(&filler, floor / 2);
    let deadline = Instant::now() + Duration::from_secs(3);
    let (status, body) = loop {
        let answer = probe(&node, "/healthz").await;
        if answer.0 != 200 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("disk_full: ") && body.contains(&fs.path.display().to_string()),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "one line: {body}");
    assert_eq!(
        probe(&node, "/livez").await,
        (200, "ok\n".to_string()),
        "alive while not ready"
    );

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        ready_within(Duration::from_secs(3)).await,
        (200, "ok\n".to_string()),
        "ready again once space is freed"
    );
    assert_eq!(probe(&node, "/livez").await, (200, "ok\n".to_string()));
    drop(node);
    wait_until_key_index_closed(&fs.path.join("key-index.plant-a.kix")).await;
}

/// `/healthz` is 503 `store_disconnected` while the zone's nats-server is
/// down and 200 once it is back; `/livez` stays 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_not_ready_while_the_store_is_down() {
    let mut zone = Zone::start(Opts::default()).await;
    let get = |path: &'static str| {
        let addr = zone.ops_addr;
        async move {
            let (status, body) = http_raw(addr, "GET", path, "text/plain", b"")
                .await
                .unwrap();
            (status, String::from_utf8(body).unwrap())
        }
    };
    let until = |path: &'static str, want: fn(&(u16, String)) -> bool, within: Duration| {
        let get = &get;
        async move {
            let deadline = Instant::now() + within;
            loop {
                let answer = get(path).await;
                if want(&answer) || Instant::now() > deadline {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(
        until("/healthz", |a| a.0 == 200, Duration::from_secs(10))
            .await
            .0,
        200
    );
    zone.nats.kill9().await.unwrap();
    let (status, body) = until("/healthz", |a| a.0 != 200, Duration::from_secs(5)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("store_disconnected: ") || body.starts_with("jetstream_unavailable: "),
        "{body}"
    );
    assert_eq!(get("/livez").await, (200, "ok\n".to_string()));
    zone.nats.restart().await.unwrap();
    let (status, body) = until("/healthz", |a| a.0 == 200, Duration::from_secs(15)).await;
    assert_eq!(status, 200, "ready again once the store is back: {body}");
}

/// The store's filesystem actually fills (the floor is 0 here, so the node
/// lets writes through, as when something else fills the disk): appends
/// fail; once the filler is deleted they succeed again within seconds,
/// without restarting the node, and the key index is consistent (an old
/// message_id is a duplicate at its original offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_disk_filled_recovers_by_itself_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let node = bsfg::node::start(embedded_config(&fs.path, 0))
        .await
        .expect("the node starts on the tmpfs");
    let client = plain_client(&node);
    let first_id = mid("before-full");
    let first = client
        .append(envelope(&first_id), batch_fact(1))
        .await
        .expect("append with room");

    let filler = fs.path.join("filler");
    fs.fill(&filler, 0);
    assert_eq!(fs.free_bytes(), 0, "the filesystem is full");
    let (failed, after) = append_until(
        &client,
        || mid("while-full"),
        2,
        Duration::from_secs(30),
        |a| a.is_err(),
    )
    .await;
    let failed = failed.expect_err("appends fail on a full disk");
    eprintln!("full: appends fail after {after:?}: {failed:?}");
    let (status, body) = probe(&node, "/healthz").await;
    assert_eq!(
        status, 503,
        "not ready while the store cannot write: {body}"
    );
    assert!(
        body.starts_with("store_storage_error: ") || body.starts_with("jetstream_unavailable: "),
        "{body}"
    );

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let (resumed, _) = append_until(
        &client,
        || mid("after-free"),
        4,
        Duration::from_secs(60),
        |a| a.is_ok(),
    )
    .await;
    let took = freed.elapsed();
    eprintln!("freed: appends succeed again after {took:?}: {resumed:?}");
    let resumed = resumed.expect("appends succeed again after space is freed");
    assert!(
        took < Duration::from_secs(10),
        "recovered within ~10 s of the space being freed, took {took:?}"
    );
    assert!(!resumed.duplicate && resumed.offset > first.offset);
    let again = client
        .append(envelope(&first_id), batch_fact(1))
        .await
        .expect("a retry after recovery");
    assert_eq!(
        (again.offset, again.duplicate),
        (first.offset, true),
        "the key index still knows the old message_id"
    );
    let (status, body) = probe(&node, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let metrics = node.metrics.render();
    // Observed with nats-server 2.15.1: without a restart it kept failing
    // writes for over 60 s after the space was freed.
    assert!(
        metric_value(&metrics, "bsfg_embedded_nats_storage_restarts_total", &[])
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "bsfg_store_storage_fault", &[]),
        Some(0.0)
    );
    drop(client);
    drop(node);
    wait_until_key_index_closed(&fs.path.join("key-index.plant-a.kix")).await;
}

/// Where the stall test mounts idmz's store (the site's `tweak` is a plain
/// function; each test runs in a process of its own).
static IDMZ_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// idmz with its own embedded store and key index on the test's tmpfs,
/// small capacities, and a 16 MiB free-space floor.
fn idmz_on_tmpfs(zone: &str, config: &mut ZoneConfig) {
    if zone != "idmz" {
        return;
    }
    let root = IDMZ_ROOT.get().expect("mounted before the site starts");
    config.nats = NatsConfig {
        url: None,
        port: 0,
        store_dir: root.join("jetstream"),
        store_free_bytes_min: 16 * MIB,
        ..NatsConfig::default()
    };
    for c in &mut config.categories {
        c.capacity_bytes = 4 * MIB;
    }
    for b in &mut config.buckets {
        b.capacity_bytes = 4 * MIB;
    }
    config.commit.key_filter_bytes = 1 << 20;
}

/// The link of `zone` that pulls from `peer`, as its operator sees it.
async fn link(
    site: &crate::crossing::Site,
    zone: &str,
    peer: &str,
) -> bsfg_proto::bsfg::v1::LinkStatus {
    let status = site.app(zone).status().await.expect("status");
    status
        .links
        .into_iter()
        .find(|l| l.peer == peer)
        .expect("the link is listed")
}

/// `bsfg_link_mode{mode="stalled"}` of idmz's link from plant-a.
async fn stalled_gauge(site: &crate::crossing::Site) -> Option<f64> {
    let metrics = site.zones["idmz"].metrics_text().await;
    metric_value(
        &metrics,
        "bsfg_link_mode",
        &["link=\"plant-a\"", "mode=\"stalled\""],
    )
}

/// A relaying zone whose disk falls below its floor: its link from the
/// plant shows `stalled` with the `disk_full` reason (status, gauge), the
/// lag grows, the plant keeps the facts; once space is freed the link
/// resumes by itself and every fact reaches enterprise once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_cannot_store_shows_its_link_stalled_and_resumes_by_itself() {
    let Some(fs) = Tmpfs::mount(128) else { return };
    IDMZ_ROOT.set(fs.path.clone()).unwrap();
    let site = crate::crossing::Site::start_with(crate::crossing::SiteOpts {
        tweak: Some(idmz_on_tmpfs),
        ..Default::default()
    })
    .await;
    let first = mid("before-full");
    site.append("plant-a", "enterprise", &first, batch_fact(0))
        .await;
    site.wait_for(
        "enterprise",
        std::slice::from_ref(&first),
        Duration::from_secs(30),
    )
    .await;

    let filler = fs.path.join("filler");
    fs.fill(&filler, 8 * MIB);
    // The free space is sampled every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_value(
        &site.zones["idmz"].metrics_text().await,
        "bsfg_disk_full",
        &[],
    ) != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "idmz never saw its disk below the floor"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // First an artifact (its pull stalls on idmz's object store), then
    // plain facts (their appends would stall on the fact store).
    let bytes = pseudo_random_bytes(64 * 1024, 3);
    let digest = sha256(&bytes);
    put(
        site.app("plant-a"),
        BUCKET,
        "batch/B1/record.bin",
        &bytes,
        &digest,
    )
    .await
    .expect("plant-a's own store has room");
    let mut with_artifact = batch_fact(1);
    with_artifact
        .attachments
        .push(bsfg_proto::bsfg::v1::AttachmentRef {
            bucket: BUCKET.into(),
            key: "batch/B1/record.bin".into(),
            digest: digest.clone(),
            size_bytes: bytes.len() as u64,
            ..Default::default()
        });
    let mut sent = vec![mid("artifact-while-full")];
    site.append("plant-a", "enterprise", &sent[0], with_artifact)
        .await;
    for n in 2..=5 {
        let id = mid("while-full");
        site.append("plant-a", "enterprise", &id, batch_fact(n))
            .await;
        sent.push(id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let stalled = loop {
        let l = link(&site, "idmz", "plant-a").await;
        if l.mode == "stalled" {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the link never showed stalled: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        stalled.last_error.starts_with("local store: ") && stalled.last_error.contains("disk_full"),
        "the artifact's pull stalls first: {stalled:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = link(&site, "idmz", "plant-a").await;
    assert_eq!(later.mode, "stalled", "{later:?}");
    assert!(
        later.lag_seconds > stalled.lag_seconds && later.lag_seconds >= 2.0,
        "the lag grows while stalled: {stalled:?} then {later:?}"
    );
    assert_eq!(stalled_gauge(&site).await, Some(1.0));
    let table = bsfg_cli::status_table::render_status(&site.app("idmz").status().await.unwrap());
    assert!(
        table.contains("stalled") && table.contains("last error: "),
        "{table}"
    );

    std::fs::remove_file(&filler).unwrap();
    let arrived = site
        .wait_for("enterprise", &sent, Duration::from_secs(30))
        .await;
    let ids: Vec<&String> = arrived
        .iter()
        .map(|f| &f.envelope.message_id)
        .filter(|m| sent.contains(m))
        .collect();
    assert_eq!(ids, sent.iter().collect::<Vec<_>>(), "once each, in order");
    let (_, got) = get(site.app("enterprise"), BUCKET, "batch/B1/record.bin", 0)
        .await
        .expect("the artifact reached enterprise");
    assert!(got == bytes, "byte-identical");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = link(&site, "idmz", "plant-a").await;
        if l.mode == "normal" && l.last_error.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the link did not return to normal: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stalled_gauge(&site).await, Some(0.0));
    let key_index = fs.path.join("key-index.idmz.kix");
    drop(site);
    wait_until_key_index_closed(&key_index).await;
}
