//! The node's Prometheus metrics, read from its operations port.

use std::time::{Duration, Instant};

/// The node's Prometheus text from its operations port (plain HTTP/1.0).
pub(crate) async fn scrape_metrics(ops_port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", ops_port)).await?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await?;
    Ok(text)
}

/// Cumulative bucket counts (upper bound in seconds, count) of a histogram.
pub(crate) fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which `p` percent of the observations made
/// between two scrapes fall (a histogram quantile, so an upper bound).
pub(crate) fn histogram_quantile_between(
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    p: f64,
) -> f64 {
    let deltas: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            (
                le,
                n - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1),
            )
        })
        .collect();
    let total = deltas.last().map_or(0.0, |d| d.1);
    deltas
        .iter()
        .find(|d| d.1 >= total * p / 100.0)
        .map_or(f64::NAN, |d| d.0)
}

/// Waits until the node's key index covers every fact of `category` (facts
/// written around the node, like the drain pre-fill, are read in by its gap
/// filler). Returns the seconds it took.
pub(crate) async fn wait_for_key_index(
    ops_port: u16,
    category: &str,
    last_offset: u64,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let label = format!("bsfg_key_index_through_offset{{category=\"{category}\"}} ");
    loop {
        let text = scrape_metrics(ops_port).await?;
        let through = text
            .lines()
            .find_map(|l| l.strip_prefix(label.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if through >= last_offset as f64 {
            return Ok(start.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "key index of {category} at {through} of {last_offset} after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
