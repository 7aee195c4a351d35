//! One verdict per request: what its handling decided — the project it was
//! for, and when it was refused, why — built where the decision is made,
//! carried by the answer, and recorded once (`Verdict::count` and
//! `Usage::record`, both called from the proxy's `logging` phase).
//!
//! Adding a refusal reason is adding a variant to [`Refused`] and its kind
//! to [`RefusalKind`]; the metric label, the dashboard's name and the count
//! follow from those tables.

use crate::limits::Exceeded;
use crate::observe::metrics::METRICS;
use crate::origin::DenyReason;

label_enum! {
    /// The kind of a refusal: the `reason` of `visitord_refusals_total`.
    pub enum RefusalKind {
        /// The project's origin policy (403; detail in
        /// `visitord_origin_rejections_total`).
        Origin => "origin",
        /// A rate limit (429; detail in `visitord_rate_limited_total`).
        Limit => "limit",
        /// A site's country rule.
        Country => "country",
        /// A body where visitord takes none (413).
        Body => "body",
        /// A method the route does not answer (405).
        Method => "method",
        /// A missing or invalid `pid` (400).
        ProjectId => "project_id",
        /// A missing or invalid `Host` (400).
        Host => "host",
        /// A request head over `limits.max_request_head` (431).
        HeadSize => "head_size",
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `shown`: the refused origin of a known project as the dashboard
    /// lists it (`usage::origin_label`); `None` for an unknown project or
    /// an origin that could not be read.
    Origin {
        reason: DenyReason,
        shown: Option<Box<str>>,
    },
    Limit(Exceeded),
    Country,
    Body,
    Method,
    ProjectId,
    Host,
    HeadSize,
}

impl Refused {
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refused::Origin { .. } => RefusalKind::Origin,
            Refused::Limit(_) => RefusalKind::Limit,
            Refused::Country => RefusalKind::Country,
            Refused::Body => RefusalKind::Body,
            Refused::Method => RefusalKind::Method,
            Refused::ProjectId => RefusalKind::ProjectId,
            Refused::Host => RefusalKind::Host,
            Refused::HeadSize => RefusalKind::HeadSize,
        }
    }

    /// An origin refusal without an origin to show.
    pub fn origin(reason: DenyReason) -> Refused {
        Refused::Origin {
            reason,
            shown: None,
        }
    }
}

/// What a request's handling decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The project the request named, when it is a known one: its index in
    /// the snapshot's project list (never taken from the request
    /// unchecked).
    pub project: Option<usize>,
    pub refused: Option<Refused>,
}

impl Verdict {
    pub fn refused(refused: Refused) -> Verdict {
        Verdict {
            project: None,
            refused: Some(refused),
        }
    }

    /// The origin policy's reason, when that is what refused.
    pub fn rejection(&self) -> Option<DenyReason> {
        match &self.refused {
            Some(Refused::Origin { reason, .. }) => Some(*reason),
            _ => None,
        }
    }

    /// The limit that refused, when one did.
    pub fn limited(&self) -> Option<Exceeded> {
        match &self.refused {
            Some(Refused::Limit(exceeded)) => Some(*exceeded),
            _ => None,
        }
    }

    /// The refused origin the dashboard lists, when there is one.
    pub fn shown_origin(&self) -> Option<&str> {
        match &self.refused {
            Some(Refused::Origin { shown, .. }) => shown.as_deref(),
            _ => None,
        }
    }

    /// Counts the refusal, if any, in the metrics: its kind, and the
    /// origin reason or limit under their own families.
    pub fn count(&self) {
        let Some(refused) = &self.refused else {
            return;
        };
        METRICS
            .refusals
            .with_label_values(&[refused.kind().as_label()])
            .inc();
        if let Some(reason) = self.rejection() {
            METRICS
                .origin_rejections
                .with_label_values(&[reason.as_label()])
                .inc();
        }
        if let Some(exceeded) = self.limited() {
            METRICS
                .rate_limited
                .with_label_values(&[exceeded.as_label()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(family: &str, reason: &str) -> u64 {
        let text = String::from_utf8(METRICS.render()).unwrap_or_default();
        let key = format!("{family}{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_refusal_is_counted_by_kind_and_detail() {
        let before = (
            count("visitord_refusals_total", "country"),
            count("visitord_refusals_total", "origin"),
            count("visitord_origin_rejections_total", "null_origin"),
        );
        Verdict::refused(Refused::Country).count();
        Verdict::refused(Refused::origin(DenyReason::NullOrigin)).count();
        Verdict::default().count();
        assert_eq!(count("visitord_refusals_total", "country"), before.0 + 1);
        assert_eq!(count("visitord_refusals_total", "origin"), before.1 + 1);
        assert_eq!(
            count("visitord_origin_rejections_total", "null_origin"),
            before.2 + 1
        );
    }

    #[test]
    fn every_refusal_has_its_kind() {
        let all = [
            Refused::origin(DenyReason::NotListed),
            Refused::Limit(Exceeded::ClientRate),
            Refused::Country,
            Refused::Body,
            Refused::Method,
            Refused::ProjectId,
            Refused::Host,
            Refused::HeadSize,
        ];
        let kinds: Vec<RefusalKind> = all.iter().map(Refused::kind).collect();
        assert_eq!(kinds, RefusalKind::ALL);
    }
}
