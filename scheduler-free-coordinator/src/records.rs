//! Signed records that spread through the whole mesh by gossip: a peer's [`Advert`] (what it is
//! and offers) and a job's [`JobAd`] (what it is and who coordinates it). Each carries a sequence
//! number so a newer version replaces an older one, and a signature by the peer that made it;
//! a record whose signature does not check is dropped.

use serde::{Deserialize, Serialize};

use crate::{BlobId, JobId, PeerId, Policy};

/// Checks an ed25519 signature: `(signer, message, signature) -> valid`. Injected by the driver,
/// so keys and crypto stay at the edge (and the simulator can skip the cost).
pub type Verifier = std::sync::Arc<dyn Fn(&PeerId, &[u8], &[u8]) -> bool + Send + Sync>;

/// Signs bytes as this peer. Injected by the driver, which holds the key.
pub type Signer = std::sync::Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// A peer's signed self-description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// The peer (its public key).
    pub peer: PeerId,
    /// Newer adverts of the same peer have larger numbers.
    pub seq: u64,
    /// Where it serves gRPC (host:port).
    pub addr: String,
    /// Task slots in all.
    pub cpus_total: u32,
    /// Task slots idle when this advert was made.
    pub cpus_free: u32,
    /// Largest task memory it accepts.
    pub memory_bytes: u64,
    /// Software version.
    pub version: String,
    /// Whether other peers can dial it (coordinators and blob sources are chosen among these).
    pub reachable: bool,
    /// When unreachable, the peers it keeps an `Attach` stream open to: gossip for it goes
    /// through them (at most [`MAX_RELAYS`](crate::reachability::MAX_RELAYS) are used).
    pub relays: Vec<PeerId>,
    /// ed25519 signature of [`Record::signing_bytes`] by `peer`.
    pub signature: Vec<u8>,
}

/// A job announced to the mesh by its origin: small, and enough for a peer to decide to pull
/// work from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAd {
    /// The job.
    pub job: JobId,
    /// The peer that accepted it.
    pub origin: PeerId,
    /// The peer that signed this version: the origin, or one of the coordinators it named
    /// (which takes over announcing the job when the origin is gone).
    pub announcer: PeerId,
    /// Newer ads of the same job have larger numbers.
    pub seq: u64,
    /// The module every task runs.
    pub module: BlobId,
    /// Number of tasks.
    pub task_count: u32,
    /// Quorum, limits, priority.
    pub policy: Policy,
    /// Peers holding the job's task table, to ask for leases, status and results.
    pub coordinators: Vec<PeerId>,
    /// When the origin accepted it, Unix milliseconds.
    pub submitted_at_ms: u64,
    /// No more work: every task is final, or the job was cancelled.
    pub done: bool,
    /// The digest of the job's content and the nonce its id was derived with, so any peer can
    /// check that `origin` derived `job` ([`crate::derive_job_id`]): nobody else can claim to be
    /// the origin of a job.
    pub content_digest: [u8; 32],
    /// See `content_digest`.
    pub nonce: Vec<u8>,
    /// The coordinators the origin named, signed by it ([`JobAd::named_signing_bytes`]): a peer
    /// that has not heard of the job takes its ad only from the origin or one of these.
    pub origin_named: Vec<PeerId>,
    /// The origin's signature over `origin_named`.
    pub origin_signature: Vec<u8>,
    /// ed25519 signature of [`Record::signing_bytes`] by `announcer`.
    pub signature: Vec<u8>,
}

const NAMED_DOMAIN: &[u8] = b"spare.v1.named\0";

impl JobAd {
    /// The bytes the origin signs over the coordinators it named.
    pub fn named_signing_bytes(job: &JobId, named: &[PeerId]) -> Vec<u8> {
        let mut out = NAMED_DOMAIN.to_vec();
        out.extend_from_slice(job.as_bytes());
        out.extend(postcard::to_stdvec(named).unwrap_or_default());
        out
    }

    /// Whether the job's origin vouches for this ad: the origin derived the job's id, and the
    /// announcer is the origin or one of the coordinators it named and signed. What a peer
    /// that has not heard of the job requires (a forged ad is refused even by a newcomer).
    pub fn origin_vouches(&self, verifier: &Verifier) -> bool {
        if crate::derive_job_id(&self.origin, &self.content_digest, &self.nonce) != self.job {
            return false;
        }
        self.announcer == self.origin
            || (self.origin_named.contains(&self.announcer)
                && !self.origin_signature.is_empty()
                && verifier(&self.origin, &Self::named_signing_bytes(&self.job, &self.origin_named), &self.origin_signature))
    }

    /// Signs, as the origin, the coordinators this ad names.
    pub fn vouch(&mut self, signer: &Signer) {
        self.origin_named = self.coordinators.clone();
        self.origin_signature = signer(&Self::named_signing_bytes(&self.job, &self.origin_named));
    }
}

/// Anything that spreads by gossip.
// An ad carries the origin's word for it (digest, nonce, named list): records are handled one at
// a time, so the size difference costs little, and boxing would change every match on them.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A peer's advert.
    Advert(Advert),
    /// A job's ad.
    JobAd(JobAd),
}

/// Which record a newer version replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    /// The advert of a peer.
    Advert(PeerId),
    /// The ad of a job.
    JobAd(JobId),
}

const DOMAIN: &[u8] = b"spare.v1.record\0";

impl Record {
    /// The peer that signs it.
    pub fn signer(&self) -> PeerId {
        match self {
            Record::Advert(a) => a.peer,
            Record::JobAd(j) => j.announcer,
        }
    }

    /// Whether this record may replace `known`, an older version of it: a peer's advert only by
    /// that peer; a job's ad by the announcer of the known one, a coordinator it names, or the
    /// job's origin (which wins every split, so a peer that missed the hand-over ad of its side
    /// still comes to follow the origin).
    pub fn may_replace(&self, known: &Record) -> bool {
        match (known, self) {
            (Record::Advert(k), Record::Advert(n)) => k.peer == n.peer,
            (Record::JobAd(k), Record::JobAd(n)) => {
                k.job == n.job
                    && k.origin == n.origin
                    && (n.announcer == k.announcer || n.announcer == n.origin || k.coordinators.contains(&n.announcer))
            }
            _ => false,
        }
    }

    /// What a newer version of it replaces.
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Advert(a) => RecordKey::Advert(a.peer),
            Record::JobAd(j) => RecordKey::JobAd(j.job),
        }
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Advert(a) => a.seq,
            Record::JobAd(j) => j.seq,
        }
    }

    fn signature(&self) -> &[u8] {
        match self {
            Record::Advert(a) => &a.signature,
            Record::JobAd(j) => &j.signature,
        }
    }

    fn signature_mut(&mut self) -> &mut Vec<u8> {
        match self {
            Record::Advert(a) => &mut a.signature,
            Record::JobAd(j) => &mut j.signature,
        }
    }

    /// The bytes that are signed: a domain tag and the record's encoding with an empty signature.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature_mut().clear();
        let mut out = DOMAIN.to_vec();
        out.extend(postcard::to_stdvec(&unsigned).unwrap_or_default());
        out
    }

    /// Signs it in place.
    pub fn sign(&mut self, signer: &Signer) {
        let sig = signer(&self.signing_bytes());
        *self.signature_mut() = sig;
    }

    /// Whether its signature is its signer's.
    pub fn verify(&self, verifier: &Verifier) -> bool {
        !self.signature().is_empty() && verifier(&self.signer(), &self.signing_bytes(), self.signature())
    }

    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes the wire encoding.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        postcard::from_bytes(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_signer(key: u8) -> Signer {
        std::sync::Arc::new(move |m: &[u8]| {
            let mut s = blake3::hash(m).as_bytes().to_vec();
            s.push(key);
            s
        })
    }

    fn fake_verifier() -> Verifier {
        std::sync::Arc::new(|p: &PeerId, m: &[u8], s: &[u8]| {
            let mut want = blake3::hash(m).as_bytes().to_vec();
            want.push(p.0[0]);
            want == s
        })
    }

    #[test]
    fn signatures_cover_every_field() {
        let mut r = Record::Advert(Advert {
            peer: PeerId([1; 32]),
            seq: 3,
            addr: "127.0.0.1:7070".into(),
            cpus_total: 4,
            cpus_free: 2,
            memory_bytes: 1 << 30,
            version: "0.1.0".into(),
            reachable: true,
            relays: vec![],
            signature: vec![],
        });
        assert!(!r.verify(&fake_verifier()), "unsigned records do not verify");
        r.sign(&fake_signer(1));
        assert!(r.verify(&fake_verifier()));
        let mut forged = r.clone();
        if let Record::Advert(a) = &mut forged {
            a.cpus_free = 4;
        }
        assert!(!forged.verify(&fake_verifier()));
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        let mut other = r.clone();
        other.sign(&fake_signer(2));
        assert!(!other.verify(&fake_verifier()), "signed by someone else");
    }

    fn ad(origin: u8, announcer: u8, coordinators: &[u8]) -> Record {
        Record::JobAd(JobAd {
            job: JobId([9; 32]),
            origin: PeerId([origin; 32]),
            announcer: PeerId([announcer; 32]),
            seq: 1,
            module: BlobId([0; 32]),
            task_count: 1,
            policy: Policy::default(),
            coordinators: coordinators.iter().map(|c| PeerId([*c; 32])).collect(),
            submitted_at_ms: 0,
            done: false,
            content_digest: [0; 32],
            nonce: vec![],
            origin_named: vec![],
            origin_signature: vec![],
            signature: vec![],
        })
    }

    #[test]
    fn a_job_ad_is_replaced_by_its_announcer_a_coordinator_it_names_or_the_origin() {
        // Peer 3 leads after a takeover from origin 1, naming 3 and 4.
        let known = ad(1, 3, &[3, 4]);
        assert!(ad(1, 3, &[3, 4, 5]).may_replace(&known), "its announcer");
        assert!(ad(1, 4, &[4]).may_replace(&known), "a coordinator it names");
        assert!(ad(1, 1, &[1, 2]).may_replace(&known), "the origin, though not named");
        assert!(!ad(1, 2, &[2]).may_replace(&known), "another peer: a rival");
        assert!(!ad(2, 2, &[2]).may_replace(&known), "a peer claiming to be the origin of the job");
    }

    /// An ad of a job really derived by `origin`, announced by `announcer`.
    fn derived(origin: u8, announcer: u8, coordinators: &[u8]) -> JobAd {
        let Record::JobAd(mut a) = ad(origin, announcer, coordinators) else { unreachable!() };
        a.content_digest = [5; 32];
        a.nonce = b"n".to_vec();
        a.job = crate::derive_job_id(&a.origin, &a.content_digest, &a.nonce);
        a
    }

    #[test]
    fn only_the_origin_vouches_for_a_job_ad() {
        let v = fake_verifier();
        assert!(derived(1, 1, &[1, 2]).origin_vouches(&v), "the origin itself");
        // A coordinator the origin named and signed.
        let mut named = derived(1, 1, &[1, 2]);
        named.vouch(&fake_signer(1));
        let by_backup = JobAd { announcer: PeerId([2; 32]), coordinators: vec![PeerId([2; 32])], ..named.clone() };
        assert!(by_backup.origin_vouches(&v));
        // Anyone else, even with a list it signed itself.
        let mut forged = JobAd { announcer: PeerId([3; 32]), coordinators: vec![PeerId([3; 32])], ..named.clone() };
        assert!(!forged.origin_vouches(&v), "not named by the origin");
        forged.vouch(&fake_signer(3));
        assert!(!forged.origin_vouches(&v), "a list not signed by the origin");
        // Claiming to be the origin of a job another peer derived.
        let thief = JobAd { origin: PeerId([3; 32]), announcer: PeerId([3; 32]), ..derived(1, 1, &[1]) };
        assert!(!thief.origin_vouches(&v), "the id was not derived from the thief's key");
    }
}
