//! What recognising canonical object_json costs against canonicalising it
//! (the path it spares), per fact, on one core:
//! `cargo run --release -p bsfg-domain --example canonical_scan`.
//! Two shapes: the benches' one-string padding object, and a plant-like
//! record with several keys, numbers and non-ASCII text.

fn main() {
    for size in [256usize, 4096] {
        let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(size - 10));
        let mixed = format!(
            r#"{{"batch":"B-2026-11-27-0042","line":"plant-a/3","operator":"op-17","readings":[21.5,22.25,-3.125,1000,0.001],"step":"mixing","text":"{}","ts":1795803751259}}"#,
            "é ümläut text ".repeat(size / 16)
        );
        for (name, json) in [("pad", &body), ("mixed", &mixed)] {
            assert!(bsfg_domain::canonical::is_canonical_object(json), "{name}");
            let n = 200_000;
            let t = std::time::Instant::now();
            let mut ok = 0;
            for _ in 0..n {
                ok += usize::from(bsfg_domain::canonical::is_canonical_object(
                    std::hint::black_box(json),
                ));
            }
            let scan_ns = t.elapsed().as_nanos() as f64 / n as f64;
            let t = std::time::Instant::now();
            for _ in 0..n / 10 {
                let v: serde_json::Value =
                    serde_json::from_str(std::hint::black_box(json)).unwrap();
                ok += serde_json_canonicalizer::to_string(&v).unwrap().len();
            }
            let slow_ns = t.elapsed().as_nanos() as f64 / (n / 10) as f64;
            println!(
                "{name} {} bytes: scan {scan_ns:.0} ns, parse+canonicalise {slow_ns:.0} ns ({ok})",
                json.len()
            );
        }
    }
}
