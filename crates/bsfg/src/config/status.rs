//! `[status]`: the zone's own status facts (see `node::status`).
//!
//! Why a setting: the fleet view at enterprise is built from facts the
//! zones send it, never by reaching into a zone; where they go (`to_zone`)
//! and how often (`interval`) is the zone's choice.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The shortest and longest interval between two status facts.
pub const STATUS_INTERVAL_MIN: Duration = Duration::from_secs(1);
pub const STATUS_INTERVAL_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// The zone the status facts are sent to (routed like any fact); unset,
    /// the node appends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_zone: Option<String>,
    /// How often one status fact is appended (1s to 1h).
    #[serde(default = "default_interval", with = "super::duration")]
    pub interval: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            to_zone: None,
            interval: default_interval(),
        }
    }
}

impl StatusConfig {
    /// Unset and at the default interval (left out of a written file).
    pub fn is_default(&self) -> bool {
        self.to_zone.is_none() && self.interval == default_interval()
    }

    /// The interval within its bounds and the destination a valid zone name.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(STATUS_INTERVAL_MIN..=STATUS_INTERVAL_MAX).contains(&self.interval) {
            anyhow::bail!(
                "[status] interval is {:?}; need {:?} to {:?}",
                self.interval,
                STATUS_INTERVAL_MIN,
                STATUS_INTERVAL_MAX
            );
        }
        if let Some(to) = &self.to_zone {
            bsfg_domain::validate::zone("status.to_zone", to)
                .map_err(|r| anyhow::anyhow!("[status] to_zone: {r}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let c: StatusConfig = toml::from_str("").unwrap();
        assert_eq!(c.interval, Duration::from_secs(30));
        assert!(c.to_zone.is_none());
        c.check().unwrap();
        let fast: StatusConfig = toml::from_str("interval = \"100ms\"").unwrap();
        assert!(fast.check().unwrap_err().to_string().contains("interval"));
        let set: StatusConfig =
            toml::from_str("to_zone = \"enterprise\"\ninterval = \"1s\"").unwrap();
        set.check().unwrap();
    }

    #[test]
    fn a_destination_no_link_leads_to_is_refused() {
        let text = "zone = \"plant-a\"\nlisten = \"127.0.0.1:0\"\n\
                    ops_listen = \"127.0.0.1:0\"\n[tls]\nmode = \"plaintext-dev\"\n\
                    [status]\nto_zone = \"enterprise\"\n";
        let config: crate::config::ZoneConfig = toml::from_str(text).unwrap();
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("[status] to_zone"), "{e}");
    }
}
