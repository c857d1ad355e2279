//! Phase 1: raw JetStream publish, pipelined, with no node: plain 256 B
//! messages, and the node's own subjects, headers and records.

use super::setup::Bench;
use crate::publish::{
    LAYOUT_COPY, create_layout_copy_stream, create_plain_stream, node_layout_message,
    plain_message, raw_publish,
};
use crate::stats::Sample;
use crate::{object_json, run_id};
use bsfg_testkit::procfs::cpu_seconds;

/// The raw publish repetitions, and nats-server's CPU per message in each.
pub(super) struct RawRuns {
    /// 256 B messages with a `Nats-Msg-Id`.
    pub(super) raw_pub: Vec<Sample>,
    /// In the node's layout, into a stream configured like its own.
    pub(super) raw_guarded: Vec<Sample>,
    pub(super) raw_cpu_us: Vec<f64>,
    pub(super) guarded_cpu_us: Vec<f64>,
}

pub(super) async fn publish_runs(
    b: &Bench,
    window: usize,
    secs: f64,
    reps: usize,
) -> anyhow::Result<RawRuns> {
    let (js, nats) = (&b.js, &b.nats);
    create_plain_stream(js, "rawpub").await?;
    create_layout_copy_stream(js, 1).await?;
    let mut raw_pub = Vec::new();
    let (mut raw_guarded, mut raw_cpu_us, mut guarded_cpu_us) =
        (Vec::new(), Vec::new(), Vec::new());
    let payload_256 = bytes::Bytes::from(vec![b'x'; 256]);
    let object_256 = object_json(256);
    for rep in 0..reps {
        let cpu_before = cpu_seconds(nats.pid());
        let tag = rep.to_string();
        let s = raw_publish(js, window, secs, u64::MAX, |i| {
            plain_message("rawpub", &tag, i, &payload_256)
        })
        .await?
        .sample();
        raw_cpu_us.push((cpu_seconds(nats.pid()) - cpu_before) * 1e6 / (s.rate * secs).max(1.0));
        eprintln!("raw publish rep {rep}: {:.0} msg/s", s.rate);
        raw_pub.push(s);
        // What AppendFact asks of JetStream, without the node: the same
        // subjects, headers and records, into a stream configured like the
        // node's.
        let cpu_before = cpu_seconds(nats.pid());
        let s = raw_publish(js, window, secs, u64::MAX, |i| {
            node_layout_message(
                LAYOUT_COPY,
                "batch:PlantA/B1042",
                &format!("{}-guarded-{rep}-{i}", run_id()),
                &object_256,
            )
        })
        .await?
        .sample();
        guarded_cpu_us
            .push((cpu_seconds(nats.pid()) - cpu_before) * 1e6 / (s.rate * secs).max(1.0));
        eprintln!("raw guarded publish rep {rep}: {:.0} msg/s", s.rate);
        raw_guarded.push(s);
    }
    Ok(RawRuns {
        raw_pub,
        raw_guarded,
        raw_cpu_us,
        guarded_cpu_us,
    })
}
