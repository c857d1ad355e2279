//! The crossing policy: which facts may cross a boundary in one direction
//! for one peer. Declarative (from the zone configuration) and pure, so the
//! same check runs where a fact is served (export) and again where a pulled
//! fact is appended (import, defence in depth).

use crate::reason::Reason;
use serde::{Deserialize, Serialize};

/// "Nothing from `origin` reaches this side except these kinds."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginRule {
    pub origin: String,
    pub allow_kinds: Vec<String>,
}

/// One direction of one peer link. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FactPolicy {
    pub categories: Vec<String>,
    pub kinds: Vec<String>,
    pub deny_kinds: Vec<String>,
    pub predicates: Vec<String>,
    pub fact_bytes_max: Option<usize>,
    pub object_bytes_max: Option<u64>,
    pub origin_rules: Vec<OriginRule>,
}

/// What the policy looks at: never the business content.
#[derive(Debug, Clone, Copy)]
pub struct Crossing<'a> {
    pub category: &'a str,
    pub origin_zone: &'a str,
    pub kind: &'a str,
    pub predicate: &'a str,
    pub fact_bytes: usize,
}

/// Why a crossing was refused: a stable reason and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRefusal {
    pub reason: Reason,
    pub message: String,
}

fn allowed(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == value)
}

impl FactPolicy {
    pub fn check(&self, c: &Crossing<'_>) -> Result<(), PolicyRefusal> {
        let refuse = |reason, message: String| Err(PolicyRefusal { reason, message });
        if !allowed(&self.categories, c.category) {
            return refuse(
                Reason::CategoryNotAllowed,
                format!("category {} is not allowed across this link", c.category),
            );
        }
        if self.deny_kinds.iter().any(|k| k == c.kind) || !allowed(&self.kinds, c.kind) {
            return refuse(
                Reason::KindNotAllowed,
                format!("subject kind {} is not allowed across this link", c.kind),
            );
        }
        if let Some(rule) = self.origin_rules.iter().find(|r| r.origin == c.origin_zone)
            && !rule.allow_kinds.iter().any(|k| k == c.kind)
        {
            return refuse(
                Reason::KindNotAllowedFromOrigin,
                format!(
                    "nothing from {} crosses this link except kinds {:?}; this fact is of kind {}",
                    c.origin_zone, rule.allow_kinds, c.kind
                ),
            );
        }
        if !allowed(&self.predicates, c.predicate) {
            return refuse(
                Reason::PredicateNotAllowed,
                format!("predicate {} is not allowed across this link", c.predicate),
            );
        }
        if let Some(max) = self.fact_bytes_max
            && c.fact_bytes > max
        {
            return refuse(
                Reason::FactTooLargeForLink,
                format!("fact is {} bytes; this link allows {max}", c.fact_bytes),
            );
        }
        Ok(())
    }

    pub fn check_object_size(&self, size_bytes: u64) -> Result<(), PolicyRefusal> {
        match self.object_bytes_max {
            Some(max) if size_bytes > max => Err(PolicyRefusal {
                reason: Reason::ObjectTooLargeForLink,
                message: format!("object is {size_bytes} bytes; this link allows {max}"),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crossing<'a>(origin: &'a str, kind: &'a str) -> Crossing<'a> {
        Crossing {
            category: "operational",
            origin_zone: origin,
            kind,
            predicate: "step_completed",
            fact_bytes: 100,
        }
    }

    #[test]
    fn empty_policy_allows_everything() {
        FactPolicy::default()
            .check(&crossing("plant-a", "batch"))
            .unwrap();
    }

    #[test]
    fn lists_restrict_and_deny_wins() {
        let p = FactPolicy {
            kinds: vec!["batch".into(), "asset".into()],
            deny_kinds: vec!["asset".into()],
            ..Default::default()
        };
        p.check(&crossing("plant-a", "batch")).unwrap();
        assert_eq!(
            p.check(&crossing("plant-a", "asset")).unwrap_err().reason,
            Reason::KindNotAllowed
        );
        assert_eq!(
            p.check(&crossing("plant-a", "recipe")).unwrap_err().reason,
            Reason::KindNotAllowed
        );
        let p = FactPolicy {
            categories: vec!["documents".into()],
            ..Default::default()
        };
        assert_eq!(
            p.check(&crossing("plant-a", "batch")).unwrap_err().reason,
            Reason::CategoryNotAllowed
        );
        let p = FactPolicy {
            predicates: vec!["step_started".into()],
            ..Default::default()
        };
        assert_eq!(
            p.check(&crossing("plant-a", "batch")).unwrap_err().reason,
            Reason::PredicateNotAllowed
        );
        let p = FactPolicy {
            fact_bytes_max: Some(99),
            ..Default::default()
        };
        assert_eq!(
            p.check(&crossing("plant-a", "batch")).unwrap_err().reason,
            Reason::FactTooLargeForLink
        );
    }

    #[test]
    fn nothing_from_enterprise_except_listed_kinds() {
        let p = FactPolicy {
            origin_rules: vec![OriginRule {
                origin: "enterprise".into(),
                allow_kinds: vec!["recipe".into(), "work_order".into()],
            }],
            ..Default::default()
        };
        p.check(&crossing("enterprise", "recipe")).unwrap();
        assert_eq!(
            p.check(&crossing("enterprise", "batch"))
                .unwrap_err()
                .reason,
            Reason::KindNotAllowedFromOrigin
        );
        // Other origins are not affected by the rule.
        p.check(&crossing("idmz", "batch")).unwrap();
    }

    #[test]
    fn object_size() {
        let p = FactPolicy {
            object_bytes_max: Some(10),
            ..Default::default()
        };
        p.check_object_size(10).unwrap();
        assert_eq!(
            p.check_object_size(11).unwrap_err().reason,
            Reason::ObjectTooLargeForLink
        );
    }
}
