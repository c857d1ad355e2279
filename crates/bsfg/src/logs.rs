//! Logs: one JSON object per line on stderr, written off the request path.
//!
//! The node logs every RPC outcome (the contract asks for it), so at
//! 10,000 appends/s it writes 10,000 lines/s. tracing-subscriber's JSON
//! formatter builds each line through serde and a field map, and
//! tracing-appender's non-blocking writer allocates every line and hands it
//! to its thread one at a time; a profile of the node under AppendFact load
//! put the two at about 8% of the node's CPU. Here, instead:
//!
//! * [`JsonLines`] formats an event straight into a per-thread buffer
//!   (no serde, no allocation once the buffer has grown);
//! * [`LineSink`] appends the line to one bounded buffer; a writer thread
//!   takes the whole buffer at most every [`FLUSH_INTERVAL`] (or when it is
//!   half full) and writes it with one call. A full buffer makes the
//!   logging thread wait for the writer: logs are slowed, never dropped.
//!
//! The line shape is the one tools already read:
//! `{"timestamp":"…Z","level":"INFO","fields":{"message":…,…},"target":"…"}`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How long a line may wait in the buffer before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// The buffer's bound: a logging thread waits for the writer beyond it.
pub const BUFFER_BYTES_MAX: usize = 1 << 20;

/// Installs the JSON log layer (filter from `BSFG_LOG`, default `info`)
/// writing to stderr. Dropping the guard writes what is buffered.
pub fn init() -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BSFG_LOG")
        .unwrap_or_else(|_| "info,async_nats=warn".into());
    let (layer, guard) = JsonLines::to_writer(Box::new(std::io::stderr()), BUFFER_BYTES_MAX);
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // `try_init` also forwards `log` records (rustls's) into these lines.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
    guard
}

/// A bounded buffer of whole lines, drained by one writer thread.
pub struct LineSink {
    state: Mutex<SinkState>,
    /// Signalled when the buffer gets its first line or fills up.
    queued: Condvar,
    /// Signalled when the writer has taken the buffer.
    room: Condvar,
    bytes_max: usize,
}

struct SinkState {
    buffer: Vec<u8>,
    stop: bool,
}

impl LineSink {
    /// Appends one line; waits while the buffer is full. A line longer than
    /// the whole buffer is taken when the buffer is empty.
    pub fn push(&self, line: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !state.buffer.is_empty()
            && state.buffer.len() + line.len() > self.bytes_max
            && !state.stop
        {
            state = self.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = state.buffer.is_empty();
        state.buffer.extend_from_slice(line);
        if was_empty || state.buffer.len() >= self.bytes_max / 2 {
            self.queued.notify_one();
        }
    }

    fn write_loop(&self, mut out: Box<dyn Write + Send>) {
        let mut taken = Vec::new();
        loop {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            while state.buffer.is_empty() && !state.stop {
                state = self.queued.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.buffer.is_empty() && state.stop {
                return;
            }
            // Let the lines of the next few milliseconds join this write.
            let deadline = Instant::now() + FLUSH_INTERVAL;
            while !state.stop && state.buffer.len() < self.bytes_max / 2 {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                state = self
                    .queued
                    .wait_timeout(state, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            std::mem::swap(&mut state.buffer, &mut taken);
            drop(state);
            self.room.notify_all();
            // Nowhere to report a failed log write: stderr is the report.
            let _ = out.write_all(&taken).and_then(|()| out.flush());
            taken.clear();
        }
    }
}

/// Stops the writer thread after it wrote everything buffered.
pub struct LogGuard {
    sink: Arc<LineSink>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.sink
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop = true;
        self.sink.queued.notify_one();
        self.sink.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The tracing layer: each event becomes one JSON line in the sink.
pub struct JsonLines {
    sink: Arc<LineSink>,
}

impl JsonLines {
    /// A layer writing to `out` through a buffer of `bytes_max` bytes.
    pub fn to_writer(out: Box<dyn Write + Send>, bytes_max: usize) -> (Self, LogGuard) {
        let sink = Arc::new(LineSink {
            state: Mutex::new(SinkState {
                buffer: Vec::with_capacity(bytes_max.min(64 * 1024)),
                stop: false,
            }),
            queued: Condvar::new(),
            room: Condvar::new(),
            bytes_max: bytes_max.max(1),
        });
        let writer = sink.clone();
        let thread = std::thread::Builder::new()
            .name("bsfg-log-writer".into())
            .spawn(move || writer.write_loop(out))
            .expect("spawning the log writer thread");
        (
            Self { sink: sink.clone() },
            LogGuard {
                sink,
                thread: Some(thread),
            },
        )
    }
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let write = |line: &mut String| {
            line.clear();
            format_line(line, now_us, event);
            self.sink.push(line.as_bytes());
        };
        // A line logged while formatting one (a Debug impl that logs) gets
        // a buffer of its own.
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => write(&mut line),
            Err(_) => write(&mut String::new()),
        });
    }
}

/// One event as a JSON line (with its newline).
fn format_line(line: &mut String, unix_us: u64, event: &Event<'_>) {
    let metadata = event.metadata();
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, unix_us);
    line.push_str("\",\"level\":\"");
    line.push_str(metadata.level().as_str());
    line.push_str("\",\"fields\":{");
    let mut fields = Fields { line, first: true };
    event.record(&mut fields);
    line.push_str("},\"target\":");
    push_json_str(line, metadata.target());
    line.push_str("}\n");
}

struct Fields<'a> {
    line: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.line.push(',');
        }
        self.first = false;
        push_json_str(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            // JSON has no NaN or infinity.
            push_json_str(self.line, &value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.line.push('"');
        let _ = write!(Escaping(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// Appends `value` as a JSON string.
fn push_json_str(line: &mut String, value: &str) {
    line.push('"');
    let _ = Escaping(line).write_str(value);
    line.push('"');
}

/// Writes JSON string content: quotes, backslashes and control characters
/// escaped, everything else as is (a `&str` is valid UTF-8 already).
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let escaped = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if (c as u32) < 0x20 => "",
                _ => continue,
            };
            self.0.push_str(&s[plain..i]);
            if escaped.is_empty() {
                let _ = write!(self.0, "\\u{:04x}", c as u32);
            } else {
                self.0.push_str(escaped);
            }
            plain = i + c.len_utf8();
        }
        self.0.push_str(&s[plain..]);
        Ok(())
    }
}

/// `2026-11-27T12:02:33.142807Z` for microseconds since the Unix epoch.
fn push_timestamp(line: &mut String, unix_us: u64) {
    let seconds = unix_us / 1_000_000;
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let second_of_day = seconds % 86_400;
    let _ = write!(
        line,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        unix_us % 1_000_000
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_logged(bytes_max: usize, log: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Shared::default();
        let (layer, guard) = JsonLines::to_writer(Box::new(out.clone()), bytes_max);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).expect("log lines are UTF-8");
        assert!(
            text.ends_with('\n'),
            "every line ends with a newline: {text:?}"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    #[test]
    fn an_event_is_one_json_object_with_every_field_typed() {
        let lines = lines_logged(BUFFER_BYTES_MAX, || {
            let message = "quote \" backslash \\ newline \n tab \t bell \u{7} ü";
            tracing::warn!(rpc = "AppendFact", offset = 42u64, delta = -3i64, ok = true, ratio = 0.5, nan = f64::NAN, detail = ?Some("x\"y"), "{message}");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], module_path!());
        let fields = &line["fields"];
        assert_eq!(
            fields["message"],
            "quote \" backslash \\ newline \n tab \t bell \u{7} ü"
        );
        assert_eq!(fields["rpc"], "AppendFact");
        assert_eq!(fields["offset"], 42);
        assert_eq!(fields["delta"], -3);
        assert_eq!(fields["ok"], true);
        assert_eq!(fields["ratio"], 0.5);
        assert_eq!(fields["nan"], "NaN");
        assert_eq!(fields["detail"], "Some(\"x\\\"y\")");
        let stamp = line["timestamp"].as_str().unwrap();
        let parsed =
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339");
        let age = time::OffsetDateTime::now_utc() - parsed;
        assert!(
            age >= time::Duration::ZERO && age < time::Duration::seconds(10),
            "timestamp is now: {stamp}"
        );
    }

    #[test]
    fn lines_are_neither_lost_nor_torn_when_the_buffer_is_small() {
        // A buffer of 300 bytes holds about two lines: loggers on four
        // threads wait for the writer again and again.
        let lines = lines_logged(300, || {
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let dispatch = dispatch.clone();
                    std::thread::spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || {
                            for i in 0..500u64 {
                                tracing::info!(thread = t, i, "line");
                            }
                        })
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
        assert_eq!(lines.len(), 2000, "every line arrives");
        for t in 0..4u64 {
            let seen: Vec<u64> = lines
                .iter()
                .filter(|l| l["fields"]["thread"] == t)
                .map(|l| l["fields"]["i"].as_u64().unwrap())
                .collect();
            assert_eq!(
                seen,
                (0..500).collect::<Vec<_>>(),
                "thread {t}'s lines arrive once each, in order"
            );
        }
    }

    #[test]
    fn timestamps_match_the_calendar() {
        let format = |us: u64| {
            let mut s = String::new();
            push_timestamp(&mut s, us);
            s
        };
        assert_eq!(format(0), "1970-01-01T00:00:00.000000Z");
        // Leap days, century rules and the end of a year, against `time`.
        for seconds in [
            951_782_400u64,
            951_868_799,
            1_709_208_000,
            4_107_542_399,
            1_795_780_841,
            4_102_444_800 - 1,
            253_402_300_799,
        ] {
            let us = seconds * 1_000_000 + 123_456;
            let expected = time::OffsetDateTime::from_unix_timestamp(seconds as i64).unwrap();
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.123456Z",
                expected.year(),
                u8::from(expected.month()),
                expected.day(),
                expected.hour(),
                expected.minute(),
                expected.second()
            );
            assert_eq!(format(us), expected, "unix second {seconds}");
        }
    }
}
