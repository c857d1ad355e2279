//! Whether this node may write the zone's streams and serve its cursors
//! now: one writer per zone is what makes a key's look-up in the key index
//! and its publish atomic.
//!
//! A zone of one node has the gate always open. A zone of several nodes
//! (`[ha]`) opens it only while this node holds the writer lease
//! (`node::lease`), until a deadline on the monotonic clock that ends
//! before the lease can expire in the store; a standby's gate is closed
//! and names the active node's URL. It also keeps what the lease last said
//! (its holder, this node's last take or renewal) for the status answer.

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
    /// The lease's holder as the lease last named it.
    holder: Option<LeaseHolder>,
    /// Send time of this node's last successful take or renewal.
    renewed_at: Option<Instant>,
}

/// A lease holder as the lease's value names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub node_id: String,
    /// Its boundary URL.
    pub url: String,
}

/// What the gate knows of the lease, for the status answer.
#[derive(Debug, Clone)]
pub struct LeaseView {
    /// False for a zone of one node (always open, no lease).
    pub leased: bool,
    pub open: bool,
    pub holder: Option<LeaseHolder>,
    pub renewed_at: Option<Instant>,
}

impl WriterGate {
    /// A zone of one node: always open.
    pub fn always_open() -> Self {
        Self {
            state: Mutex::new(GateState {
                open_until: None,
                holder: None,
                renewed_at: None,
            }),
        }
    }

    /// A node of several: closed until the lease is taken.
    pub fn closed() -> Self {
        Self {
            state: Mutex::new(GateState {
                open_until: Some(Instant::now()),
                holder: None,
                renewed_at: None,
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

    /// Closed now; `holder` is the node that holds the lease, if known.
    pub fn close(&self, holder: Option<LeaseHolder>) {
        let mut state = self.state.lock().expect("writer gate poisoned");
        assert!(
            state.open_until.is_some(),
            "an always-open gate is not leased"
        );
        state.open_until = Some(Instant::now());
        state.holder = holder;
    }

    /// This node took or renewed the lease at `sent` (its gate opens
    /// separately, by [`WriterGate::open_until`]); `own` is its own name.
    pub fn renewed(&self, sent: Instant, own: LeaseHolder) {
        let mut state = self.state.lock().expect("writer gate poisoned");
        state.renewed_at = Some(sent);
        state.holder = Some(own);
    }

    /// What the gate knows of the lease now.
    pub fn lease_view(&self) -> LeaseView {
        let state = self.state.lock().expect("writer gate poisoned");
        LeaseView {
            leased: state.open_until.is_some(),
            open: state.open_until.is_none_or(|until| Instant::now() < until),
            holder: state.holder.clone(),
            renewed_at: state.renewed_at,
        }
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
        let message = match state.holder.as_ref().map(|h| &h.url) {
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
        gate.close(Some(LeaseHolder {
            node_id: "b".into(),
            url: "https://10.0.0.2:7443".into(),
        }));
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

    #[test]
    fn the_lease_view_tells_a_single_node_from_a_standby_and_names_the_holder() {
        let single = WriterGate::always_open().lease_view();
        assert!(!single.leased && single.open && single.holder.is_none());
        let gate = WriterGate::closed();
        assert!(gate.lease_view().renewed_at.is_none());
        let own = LeaseHolder {
            node_id: "a".into(),
            url: "https://10.0.0.1:7443".into(),
        };
        let sent = Instant::now();
        gate.renewed(sent, own.clone());
        let view = gate.lease_view();
        assert!(view.leased && !view.open, "renewed, not yet opened");
        assert_eq!((view.holder, view.renewed_at), (Some(own), Some(sent)));
        gate.open_until(Instant::now() + Duration::from_secs(60));
        assert!(gate.lease_view().open);
    }
}
