//! Samples of a measured configuration and their medians and percentiles.

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// p-th percentile (0..100) of latencies in microseconds, returned in ms.
pub(crate) fn pct_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[idx] as f64 / 1000.0
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
}

pub(crate) fn summarize(samples: &[Sample]) -> Sample {
    Sample {
        rate: median(samples.iter().map(|s| s.rate).collect()),
        p50_ms: median(samples.iter().map(|s| s.p50_ms).collect()),
        p99_ms: median(samples.iter().map(|s| s.p99_ms).collect()),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

pub(crate) fn fmt_rates(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|s| format!("{:.0}", s.rate))
        .collect::<Vec<_>>()
        .join(" / ")
}
