//! The peer's protocol decisions beyond the job table, each a small sans-IO machine that takes
//! `now` and never touches a socket, a disk or a clock, so that the real peer (`spare-peer`)
//! and the simulator run the very same rules:
//!
//! - [`mesh`]: membership and what this peer publishes (adverts, job ads, greetings);
//! - [`roles`]: active or standby for each job held, takeover, top-ups, re-announcing;
//! - [`heal`]: two leaders of one job after a split, hand-overs and merges;
//! - [`replication`]: the active coordinator's ordered stream to each backup;
//! - [`catchup`]: whole adoptions where the stream cannot repair a backup;
//! - [`reports`]: a worker's report batches to a coordinator, retried across a short cut;
//! - [`slots`]: how many replicas a peer holds per slot, and the slot loop's other rules.
//!
//! Each machine has one contract: inputs are `push`/`handle_*`/`request` calls with `now`;
//! outputs are drained with `poll_*` until they give nothing, and `poll_timeout` says when
//! polling may give something again.

pub mod catchup;
pub mod heal;
pub mod mesh;
mod outbox;
pub mod replication;
pub mod reports;
pub mod roles;
pub mod slots;
