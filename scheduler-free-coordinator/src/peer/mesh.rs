//! The peer's side of the mesh: [`Membership`] (SWIM plus signed records) and what this peer
//! publishes into it: its advert (when what it says changes, and once an hour; not as its free
//! slots fill and empty, which would be news to the whole mesh every few seconds), the ads of the jobs it leads (each with a sequence number that a later
//! run of this peer still beats), and greetings to the peers it joins through (again every few
//! seconds while alone, and now and then otherwise, which heals a partition whose sides forgot
//! each other).

use std::collections::HashMap;

use crate::membership::{Member, Membership, MembershipConfig};
use crate::records::{Advert, JobAd, Record, Signer};
use crate::{JobId, JobSpec, Millis, PeerId};

/// An advert is sent again this often even when nothing in it changed: a last resort for a peer
/// that missed it both by gossip and directly (every member that comes up gets it directly).
pub const ADVERT_REFRESH_MS: Millis = 3_600_000;
/// While alone, the peers joined through are greeted again this often…
pub const REJOIN_MS: Millis = 3_000;
/// …and this often otherwise.
pub const REGREET_MS: Millis = 300_000;
/// Most gossip sends in flight at once; past it a message is dropped (SWIM tolerates loss).
pub const MAX_GOSSIP_SENDS: usize = 64;
/// How long one gossip send may take.
pub const GOSSIP_SEND_TIMEOUT_MS: Millis = 2_000;

/// Whether two adverts say the same, free slots, sequence and signature aside.
fn same_content(a: &Advert, b: &Advert) -> bool {
    (a.peer, &a.addr, a.cpus_total, a.memory_bytes, &a.version, a.reachable, &a.relays)
        == (b.peer, &b.addr, b.cpus_total, b.memory_bytes, &b.version, b.reachable, &b.relays)
}

/// Membership settings for a peer.
pub fn membership_config() -> MembershipConfig {
    MembershipConfig::lan(100)
}

/// The advert of `peer`, dialled at `addr`, with `total` sandbox slots of which `free` are free
/// and `memory_bytes` for a task; unreachable peers name the `relays` they are reached through.
/// Its sequence number, epoch and signature are set as it is published
/// ([`MeshState::publish_advert`]); its version is this crate's, the workspace's one version.
pub fn advert(peer: PeerId, addr: String, total: u32, free: u32, memory_bytes: u64, reachable: bool, relays: Vec<PeerId>) -> Advert {
    Advert {
        peer,
        seq: 0,
        addr,
        cpus_total: total,
        cpus_free: free,
        memory_bytes,
        version: env!("CARGO_PKG_VERSION").to_string(),
        reachable,
        relays,
        signature: Vec::new(),
        epoch: 0,
    }
}

/// The ad of `job` as submitted (`spec`, and the content digest and nonce its id derives from),
/// announced by `announcer` with its list of `coordinators` (`done` once the job ended). Its
/// sequence number, the origin's word for it and the signatures are set as it is published
/// ([`MeshState::publish_job_ad`]).
pub fn job_ad(job: JobId, spec: &JobSpec, announcer: PeerId, coordinators: Vec<PeerId>, done: bool, content_digest: [u8; 32], nonce: Vec<u8>) -> JobAd {
    JobAd {
        job,
        origin: spec.origin,
        announcer,
        seq: 0,
        module: spec.module,
        task_count: spec.task_count,
        policy: spec.policy,
        coordinators,
        submitted_at_ms: spec.submitted_at_ms,
        done,
        content_digest,
        nonce,
        origin_named: Vec::new(),
        origin_signature: Vec::new(),
        signature: Vec::new(),
        chain: Vec::new(),
    }
}

/// Membership and what this peer has published.
pub struct MeshState {
    /// SWIM and the records.
    pub membership: Membership,
    advert_seq: u64,
    /// The last advert published, and when.
    advertised: Option<(Advert, Millis)>,
    job_seq: HashMap<JobId, u64>,
    last_greet: Option<Millis>,
}

impl AsRef<Membership> for MeshState {
    fn as_ref(&self) -> &Membership {
        &self.membership
    }
}

impl MeshState {
    /// What a peer with this membership publishes.
    pub fn new(membership: Membership) -> MeshState {
        MeshState {
            membership,
            advert_seq: 0,
            advertised: None,
            job_seq: HashMap::new(),
            last_greet: None,
        }
    }

    /// Whether `advert` is due: never published, it says something the last one did not
    /// (its free slots aside: they are what they were when it was made), or a refresh.
    pub fn advert_due(&self, advert: &Advert, now: Millis) -> bool {
        match &self.advertised {
            None => true,
            Some((last, _)) if !same_content(last, advert) => true,
            // A rejoin under a new epoch: the new run is introduced by its own advert.
            Some((last, _)) if last.epoch != self.membership.me().epoch => true,
            Some(_) => now >= self.advert_due_at(),
        }
    }

    /// When the advert's refresh is due (a time already past if it is), so a driver can sleep
    /// until then; a change is due at once, whenever the driver makes one.
    pub fn advert_due_at(&self) -> Millis {
        self.advertised.as_ref().map_or(0, |(_, at)| at + ADVERT_REFRESH_MS)
    }

    /// Publishes `advert` (its `seq`, `epoch` and signature are set here) at `unix_ms`.
    pub fn publish_advert(&mut self, mut advert: Advert, unix_ms: u64, signer: &Signer, now: Millis) {
        // Unix time, so an advert made after a restart still replaces the ones before it.
        self.advert_seq = unix_ms.max(self.advert_seq + 1);
        advert.seq = self.advert_seq;
        // The run it introduces (a rejoin renews it: see `advert_due`).
        advert.epoch = self.membership.me().epoch;
        self.advertised = Some((advert.clone(), now));
        let mut record = Record::Advert(advert);
        record.sign(signer);
        self.membership.publish(record, now);
    }

    /// Publishes `ad` (its `seq` and signature are set here, and the origin's word for it:
    /// signed here when this peer is the origin, else carried from the ad known, with a link
    /// signed here naming the coordinators this peer added: [`JobAd::extend_chain`]) at
    /// `unix_ms`.
    pub fn publish_job_ad(&mut self, mut ad: JobAd, unix_ms: u64, signer: &Signer, now: Millis) {
        let seq = (self.job_seq.get(&ad.job).copied().unwrap_or(0) + 1).max(unix_ms);
        self.job_seq.insert(ad.job, seq);
        ad.seq = seq;
        if ad.announcer == ad.origin {
            ad.vouch(signer);
        } else if let Some(Record::JobAd(known)) = self.membership.record(&crate::records::RecordKey::JobAd(ad.job)) {
            // Another coordinator carries the origin's word for it (and for the job's id).
            ad.content_digest = known.content_digest;
            ad.nonce = known.nonce;
            ad.origin_named = known.origin_named;
            ad.origin_signature = known.origin_signature;
            ad.chain = known.chain;
            ad.extend_chain(signer);
        }
        let mut record = Record::JobAd(ad);
        record.sign(signer);
        self.membership.publish(record, now);
    }

    /// The sequence number of this peer's last ad of `job`, if it published one.
    pub fn job_seq(&self, job: &JobId) -> Option<u64> {
        self.job_seq.get(job).copied()
    }

    /// Takes a view of the mesh formed before (`members` and their signed `records`, known to
    /// the mesh already: [`Membership::restore`]), as a peer that joined through its bootstrap
    /// peers at `now`: its next greeting is the periodic one.
    pub fn restore(&mut self, members: impl IntoIterator<Item = Member>, records: &[Record], now: Millis) {
        self.membership.restore(members, records, now);
        self.last_greet = Some(now);
    }

    /// Whether the peers joined through are due a greeting.
    pub fn greet_due(&self, now: Millis) -> bool {
        now >= self.greet_due_at()
    }

    /// When [`MeshState::greet_due`] next holds while membership stays as alone (or not) as it
    /// is now (a time already past if it holds now).
    pub fn greet_due_at(&self) -> Millis {
        let gap = if self.membership.active() == 0 { REJOIN_MS } else { REGREET_MS };
        self.last_greet.map_or(0, |at| at + gap)
    }

    /// Greets the peers at `bootstrap` (all but `own_addr`), so they announce themselves to
    /// this peer.
    pub fn greet(&mut self, bootstrap: &[String], own_addr: &str, now: Millis) {
        self.last_greet = Some(now);
        for addr in bootstrap.iter().filter(|a| *a != own_addr) {
            self.membership.join(addr, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::PeerId;
    use crate::membership::Member;
    use crate::records::Verifier;

    fn state() -> MeshState {
        let verifier: Verifier = Arc::new(|_: &PeerId, _: &[u8], _: &[u8]| true);
        let me = Member { peer: PeerId([1; 32]), addr: "a:1".into(), epoch: 1 };
        MeshState::new(Membership::new(me, membership_config(), 7, verifier))
    }

    fn advert(free: u32) -> Advert {
        Advert {
            peer: PeerId([1; 32]),
            seq: 0,
            addr: "a:1".into(),
            cpus_total: 4,
            cpus_free: free,
            memory_bytes: 1,
            version: String::new(),
            reachable: true,
            relays: Vec::new(),
            signature: Vec::new(),
            epoch: 0,
        }
    }

    #[test]
    fn an_advert_goes_out_when_what_it_says_changes_not_when_slots_fill() {
        let signer: Signer = Arc::new(|_: &[u8]| vec![0; 64]);
        let mut s = state();
        assert!(s.advert_due(&advert(4), 0));
        s.publish_advert(advert(4), 1_000, &signer, 0);
        assert!(!s.advert_due(&advert(3), 500), "free slots are not news");
        assert!(!s.advert_due(&advert(0), ADVERT_REFRESH_MS - 1));
        assert!(s.advert_due(&Advert { addr: "b:2".into(), ..advert(4) }, 500), "a new address is");
        assert!(s.advert_due(&Advert { reachable: false, ..advert(4) }, 500), "so is reachability");
        assert!(s.advert_due(&advert(4), ADVERT_REFRESH_MS), "refresh");
        s.publish_advert(advert(3), 900, &signer, 1_000);
        assert_eq!(s.advert_seq, 1_001, "later than the last even if the clock went back");
    }

    #[test]
    fn a_lone_peer_greets_often_and_a_joined_one_rarely() {
        let mut s = state();
        assert!(s.greet_due(0));
        s.greet(&["a:1".into(), "b:2".into()], "a:1", 0);
        assert!(!s.greet_due(REJOIN_MS - 1));
        assert!(s.greet_due(REJOIN_MS));
    }

    #[test]
    fn due_times_agree_with_due_checks() {
        let signer: Signer = Arc::new(|_: &[u8]| vec![0; 64]);
        let mut s = state();
        assert_eq!((s.advert_due_at(), s.greet_due_at()), (0, 0), "due at once before the first");
        s.publish_advert(advert(4), 1_000, &signer, 100);
        assert_eq!(s.advert_due_at(), 100 + ADVERT_REFRESH_MS);
        let at = s.advert_due_at();
        assert!(!s.advert_due(&advert(3), at - 1) && s.advert_due(&advert(3), at));
        s.greet(&["b:2".into()], "a:1", 50);
        assert_eq!(s.greet_due_at(), 50 + REJOIN_MS, "alone");
        assert!(!s.greet_due(s.greet_due_at() - 1) && s.greet_due(s.greet_due_at()));
    }

    #[test]
    fn the_last_job_ad_sequence_is_kept() {
        let signer: Signer = Arc::new(|_: &[u8]| vec![0; 64]);
        let mut s = state();
        let job = JobId([3; 32]);
        assert_eq!(s.job_seq(&job), None);
        let ad = JobAd {
            job,
            origin: PeerId([1; 32]),
            announcer: PeerId([1; 32]),
            seq: 0,
            module: crate::BlobId([0; 32]),
            task_count: 1,
            policy: crate::Policy::default(),
            coordinators: vec![PeerId([1; 32])],
            submitted_at_ms: 0,
            done: false,
            content_digest: [0; 32],
            nonce: Vec::new(),
            origin_named: Vec::new(),
            origin_signature: Vec::new(),
            signature: Vec::new(),
            chain: Vec::new(),
        };
        s.publish_job_ad(ad.clone(), 5_000, &signer, 0);
        assert_eq!(s.job_seq(&job), Some(5_000));
        s.publish_job_ad(ad, 4_000, &signer, 1);
        assert_eq!(s.job_seq(&job), Some(5_001), "later than the last even if the clock went back");
    }
}
