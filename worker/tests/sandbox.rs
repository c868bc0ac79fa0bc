//! The sandbox suite (`sandbox/cases.rs`) on slot threads: deadlines are epoch checks, and
//! ordinary runs have a fuel budget, so they run metered.

use spare_peer::sandbox::SandboxConfig;

#[path = "sandbox/cases.rs"]
mod cases;

/// The fuel budget of an ordinary run in the suite.
const FUEL: u64 = 1_000_000_000;

/// Sandboxes as the suite asks for them: on threads, the default.
fn isolated(config: SandboxConfig) -> SandboxConfig {
    config
}
