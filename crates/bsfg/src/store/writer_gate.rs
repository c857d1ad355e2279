//! Whether this node may write the zone's streams and serve its cursors
//! now: one writer per zone is what makes a key's look-up in the key index
//! and its publish atomic.
//!
//! A zone of one node has the gate always open. A zone of several nodes
//! (`[ha]`) opens it only while this node holds the writer lease
//! (`node::lease`), until a deadline on the monotonic clock that ends
//! before the lease can expire in the store; a standby's gate is closed
//! and names the active node's URL.

use bsfg_domain::{Code, Reason, Rejection};
use std::sync::Mutex;
use std::time::Instant;

/// The gate; see the module documentation.
#[derive(Debug)]
pub struct WriterGate {
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    /// Open until then; None: always open (a zone of one node).
    open_until: Option<Instant>,
    /// The active node's URL as the lease last named it.
    active_url: Option<String>,
}

impl WriterGate {
    /// A zone of one node: always open.
    pub fn always_open() -> Self {
        Self {
            state: Mutex::new(GateState {
                open_until: None,
                active_url: None,
            }),
        }
    }

    /// A node of several: closed until the lease is taken.
    pub fn closed() -> Self {
        Self {
            state: Mutex::new(GateState {
                open_until: Some(Instant::now()),
                active_url: None,
            }),
        }
    }

    /// Open until `until` (a renewal's send time plus the lease, less the
    /// margin).
    pub fn open_until(&self, until: Instant) {
        let mut state = self.state.lock().expect("writer gate poisoned");
        assert!(
            state.open_until.is_some(),
            "an always-open gate is not leased"
        );
        state.open_until = Some(until);
    }

    /// Closed now; `active_url` is the node that holds the lease, if known.
    pub fn close(&self, active_url: Option<String>) {
        let mut state = self.state.lock().expect("writer gate poisoned");
        assert!(
            state.open_until.is_some(),
            "an always-open gate is not leased"
        );
        state.open_until = Some(Instant::now());
        state.active_url = active_url;
    }

    /// Names the active node (another node's lease was read).
    pub fn set_active_url(&self, active_url: Option<String>) {
        self.state.lock().expect("writer gate poisoned").active_url = active_url;
    }

    pub fn is_open(&self) -> bool {
        let state = self.state.lock().expect("writer gate poisoned");
        state.open_until.is_none_or(|until| Instant::now() < until)
    }

    /// Ok while open; else `unavailable` / `not_active`, naming the active
    /// node where to go.
    pub fn check(&self) -> Result<(), Rejection> {
        if self.is_open() {
            return Ok(());
        }
        let state = self.state.lock().expect("writer gate poisoned");
        let message = match &state.active_url {
            Some(url) => {
                format!("not_active: this node is a standby of its zone; the active node is {url}")
            }
            None => "not_active: this node is a standby of its zone and no node holds \
                     the writer lease now; retry with backoff"
                .to_string(),
        };
        Err(Rejection::new(
            Code::Unavailable,
            Reason::NotActive,
            message,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_leased_gate_is_open_only_until_its_deadline_and_names_the_active_node() {
        assert!(WriterGate::always_open().check().is_ok());
        let gate = WriterGate::closed();
        let refusal = gate.check().unwrap_err();
        assert_eq!(refusal.reason, Reason::NotActive);
        gate.open_until(Instant::now() + Duration::from_secs(60));
        assert!(gate.check().is_ok());
        gate.close(Some("https://10.0.0.2:7443".into()));
        let refusal = gate.check().unwrap_err();
        assert_eq!(refusal.code, Code::Unavailable);
        assert!(
            refusal.message.ends_with("https://10.0.0.2:7443"),
            "{}",
            refusal.message
        );
        gate.open_until(Instant::now());
        assert!(!gate.is_open(), "a deadline reached closes the gate");
    }
}
