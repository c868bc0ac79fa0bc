//! The name of a network diversity (`prefix`, `wide`, `off`) as the peer's `diversity` setting,
//! `spare submit --diversity` and `spare sim --diversity` take it, and its meanings in the
//! protocol and on the wire.

use serde::{Deserialize, Serialize};
use spare_protocol::Diversity;
use spare_proto as pb;

/// How far apart the networks of one task's replicas must be (see `docs/trust.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiversityName {
    /// Distinct /24 (IPv4) or /48 (IPv6) networks.
    #[default]
    Prefix,
    /// Distinct /16 (IPv4) or /32 (IPv6) networks: stricter.
    Wide,
    /// Distinct keys only.
    Off,
}

impl From<DiversityName> for Diversity {
    fn from(d: DiversityName) -> Diversity {
        match d {
            DiversityName::Prefix => Diversity::Prefix,
            DiversityName::Wide => Diversity::Wide,
            DiversityName::Off => Diversity::Off,
        }
    }
}

impl From<DiversityName> for pb::Diversity {
    fn from(d: DiversityName) -> pb::Diversity {
        crate::wire::convert::diversity_pb(Some(d.into()))
    }
}

impl std::fmt::Display for DiversityName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiversityName::Prefix => "prefix",
            DiversityName::Wide => "wide",
            DiversityName::Off => "off",
        })
    }
}
