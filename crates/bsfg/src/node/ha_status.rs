//! The status answer's `ha` part: this node's role in its zone (single,
//! active or standby), the writer lease as this node last saw it
//! (`store::writer_gate`, kept by `node::lease`), and the store's servers
//! with their replicas of the fact streams (`store::replicas`, the last
//! reading). Nothing here asks the store: it reads what the lease loop and
//! the replica sampler keep.

use crate::config::ZoneConfig;
use crate::store::Store;
use crate::store::replicas;
use bsfg_proto::bsfg::v1::{ClusterServerStatus, HaStatus, StreamReplicaStatus};

/// `single`, `active` or `standby`; see `HaStatus.role` in the contract.
pub fn role(leased: bool, open: bool) -> &'static str {
    match (leased, open) {
        (false, _) => "single",
        (true, true) => "active",
        (true, false) => "standby",
    }
}

/// The zone's writer lease and store servers as this node sees them.
pub fn ha_status(config: &ZoneConfig, store: &Store) -> HaStatus {
    let lease = store.facts.gate().lease_view();
    let (holder_node_id, holder_url) = lease.holder.map(|h| (h.node_id, h.url)).unwrap_or_default();
    let reading = store.replicas.last();
    HaStatus {
        node_id: config
            .ha
            .as_ref()
            .map(|ha| ha.node_id.clone())
            .unwrap_or_default(),
        role: role(lease.leased, lease.open).into(),
        lease_holder_node_id: holder_node_id,
        lease_holder_url: holder_url,
        lease_renewal_age_seconds: lease.renewed_at.map_or(-1.0, |t| t.elapsed().as_secs_f64()),
        servers_read_age_seconds: reading
            .as_ref()
            .map_or(-1.0, |r| r.at.elapsed().as_secs_f64()),
        servers: reading
            .map(|r| r.servers.iter().map(server_status).collect())
            .unwrap_or_default(),
        ..Default::default()
    }
}

fn server_status(server: &replicas::Server) -> ClusterServerStatus {
    ClusterServerStatus {
        name: server.name.clone(),
        current: server.current,
        streams: server
            .replicas
            .iter()
            .map(|r| StreamReplicaStatus {
                category: r.category.clone(),
                leader: r.leader,
                current: r.current,
                offline: r.offline,
                lag: r.lag,
                last_seen_age_seconds: r.last_seen_age.as_secs_f64(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::role;

    #[test]
    fn a_node_without_a_lease_is_single_and_a_leased_one_active_only_while_open() {
        assert_eq!(role(false, true), "single");
        assert_eq!(role(true, true), "active");
        assert_eq!(role(true, false), "standby");
    }
}
