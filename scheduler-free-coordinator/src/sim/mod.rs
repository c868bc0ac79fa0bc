//! A seeded, discrete-event simulator of a whole Spare mesh, driving the real state machines:
//! [`Membership`](crate::membership::Membership) (SWIM by foca, with signed adverts and job
//! ads), [`Coordinator`](crate::Coordinator), [`Puller`](crate::pull::Puller) and the records,
//! for thousands of virtual peers on a virtual network and clock. No threads, no sockets, no
//! clock, no real crypto: one seed gives one run, byte for byte.
//!
//! **The rules are the peer's.** Every decision a peer makes beyond the job table comes from
//! the sans-IO machines of [`crate::peer`], which the real peer runs too; the simulator only
//! drives them with virtual time and carries out what they return: the worker side of a peer
//! ([`peer::work::Work`](crate::peer::work::Work)), its coordinator side
//! ([`peer::host::Hosts`](crate::peer::host::Hosts)), what it publishes into membership and the
//! membership settings ([`peer::mesh`](crate::peer::mesh)), what its memberships tell its
//! coordinator ([`peer::members`](crate::peer::members)) and the sizes of its messages
//! ([`peer::wire`](crate::peer::wire)). The simulator keeps no copy of their constants.
//!
//! One run: the job comes to a mesh of `peers` peers that formed before it, each holding its
//! cell's members and their adverts as gossip had left them
//! ([`MeshState::restore`](crate::peer::mesh::MeshState::restore): nothing sent); with
//! `cold_start` they all start with the job instead and join through the bootstrap peers of
//! their cell (the join wave: every peer checks each member it hears of before that member's
//! advert reaches it). Peer 0, the *origin*, accepts one job of `tasks` tasks, hands it to two backup coordinators
//! and announces it; every peer pulls leases for it from the first live coordinator the ad
//! names, "runs" each replica for a random 50–200 ms on one of its slots, and reports a signed
//! attestation. A task's honest output is BLAKE3 of its index; liars answer their own wrong
//! bytes, or with `collude` one shared wrong answer per task. Messages are lost with
//! probability `loss` and delayed 1–20 ms. With `churn`, peers crash and fresh ones join while
//! the job runs (coordinators too with `churn_coordinators`); `crash_origin_at` crashes the
//! origin, and `restart_origin_at` starts it again on what it had recorded (its list and its
//! attestation log, as a real peer's store keeps them), in standby beside its replacement.
//! `partition_at` splits the network in two, by peer, until `heal_at`: every message between
//! the sides is lost (who is on which side: [`net`]), so the far side's backup takes the job
//! over and the two leaders settle after the heal. The run ends when the job is finished and
//! membership has converged.
//!
//! **Replicated coordination** is [`peer::host`](crate::peer::host)'s, carried out as it asks:
//! the origin hands the job to two backups chosen by [`rendezvous`](crate::rendezvous), streams
//! them what it records, and a backup whose membership declares the coordinators before it dead
//! takes the job over; two leaders settle by rank. Only the leading coordinators' verdicts are
//! counted, each task's first once; a task decided again differently is counted in
//! `verdicts_overturned`. The report gives `coordinator_takeovers` and `takeover_ms` (from the
//! leader's crash, or from the cut for a takeover across a partition, to its successor's first
//! lease).
//!
//! The pieces:
//! - [`engine`]: the state and the main loop; [`queue`]: the event queue (by virtual time, then
//!   scheduling order: a ring of millisecond buckets, with a map for the far future) and
//!   [`packets`]: the bytes of its gossip packets, in chunks per bucket;
//! - [`net`]: loss, partitions, delay, byte counts (sized by [`crate::peer::wire`]), the RPCs;
//! - [`peer`]: a virtual peer; [`mesh`]: driving its memberships and what it publishes
//!   ([`crate::peer::mesh`]);
//!   [`work`]: the worker side, the real [`Work`](crate::peer::work::Work) driven;
//! - [`coord`]: driving each coordinator's [`Hosts`](crate::peer::host::Hosts) (its messages,
//!   notices and timer; the mesh as [`MeshMembers`](crate::peer::members::MeshMembers) shows
//!   it); [`serve`]: the calls, ads and membership changes it is handed;
//! - [`workload`]: outputs and liars; [`churn`]: crashes and joins; [`keys`]: identities and
//!   the signature stand-in; [`rng`]: the seeded generator;
//! - [`metrics`] and [`report`]: what is counted and reported; [`config`]: what is asked.
//!
//! **Membership cells.** foca finds a member by a linear scan, once for the sender and once per
//! piggybacked update of every message, so simulating N peers that each see all N costs N²
//! memory and about N³ time (2,000 peers: 91 s and 1.7 GB for 30 virtual seconds of a bare
//! mesh); a deployed peer pays only its own share. So a mesh larger than `cell_size` (default
//! 100) is simulated as *cells*, each a real SWIM cluster of at most `cell_size − 1` workers,
//! and every coordinator of the job (the origin and backups from the start, a replacement from
//! when it adopts the job, joining each cell as a newcomer) is a member of every cell, through
//! one real `Membership` per cell. The coordinators are the bridges: their job ads reach every
//! cell, workers see them alive or dead in their own view, and they hear every crash from the
//! crashed peer's cell, so a takeover comes from real failure detection. Not modelled: a worker
//! seeing workers of other cells, so per-peer gossip bytes and convergence rounds are those of a
//! `cell_size`-peer cluster plus the coordinators. SWIM's own messages do not grow with the
//! cluster, but adverts and the direct record sync to every newcomer grow with the peers a peer
//! sees, so a real 10,000-peer mesh would gossip more than these figures show. A mesh of at
//! most `cell_size` peers is one cell, exactly as deployed.
//!
//! Where the time and memory go at 10,000 peers and more: `docs/architecture.md`. The
//! memberships share one copy of each record (a [`RecordPool`](crate::membership::RecordPool))
//! and the logs one copy of each attestation.
//!
//! Other simplifications, each also noted where it is made:
//! - signatures are a keyed 64-bit hash stand-in of ed25519's size ([`keys`]);
//! - the origin publishes no advert (it did not when `Membership` kept its own records in a
//!   `HashSet`, whose order would have leaked into the run; they are in a `BTreeSet` now, and
//!   the backups, which are workers too, advertise and announce the job alike);
//! - RPC transport overhead is an estimate ([`crate::peer::wire`]); a lost RPC message fails
//!   the call after `rpc_fail_ms` ([`net`]);
//! - the origin picks its backups among every initial peer, from the mesh formed before the
//!   job (with `cold_start` too, though the origin then knows nobody yet);
//! - liveness at a coordinator is simplified ([`coord`]);
//! - reputation is not replicated (no peer replicates it), and `history` is given to the
//!   origin's coordinator only;
//! - a peer fetches the module once, and replicas never miss their deadline;
//! - the cap on gossip sends in flight
//!   ([`MAX_GOSSIP_SENDS`](crate::peer::mesh::MAX_GOSSIP_SENDS)) is not modelled.

pub mod churn;
pub mod config;
pub mod coord;
pub mod engine;
pub mod keys;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod packets;
pub mod peer;
pub mod queue;
pub mod report;
pub mod rng;
pub mod serve;
pub mod work;
pub mod workload;

pub use config::{SimConfig, SimError};
pub use engine::run;
pub use report::{Rate, Report};
