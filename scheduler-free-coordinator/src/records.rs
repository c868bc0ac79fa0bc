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
    /// When the run that made it started (Unix ms, its `Member.epoch`): the one run of `peer`
    /// that hearsay may introduce to peers that have not met it (see `membership::screen`). 0
    /// in adverts of earlier versions. Encoded after the rest ([`Record::encode`]), so their
    /// adverts still decode and verify.
    #[serde(skip)]
    pub epoch: u64,
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
    /// The coordinators added after the origin named its own, each link signed by a peer the
    /// origin or an earlier link named (at most [`MAX_CHAIN`] links): what lets a newcomer take
    /// the ad of a coordinator the origin never named. Encoded after the rest, like
    /// [`Advert::epoch`].
    #[serde(skip)]
    pub chain: Vec<Named>,
}

/// One coordinator's signed word for the coordinators it named for a job (at a top-up that added
/// peers the origin did not name): `signature` by `signer` over [`JobAd::named_signing_bytes`],
/// the same statement the origin signs over `origin_named`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    /// The coordinator that named them (named itself by the origin or an earlier link).
    pub signer: PeerId,
    /// The job's coordinators as it named them.
    pub named: Vec<PeerId>,
    /// Its signature.
    pub signature: Vec<u8>,
}

/// Most links an ad's chain may hold; an ad whose chain is longer vouches only through
/// `origin_named` (links no coordinator of the ad needs are pruned as each is added).
pub const MAX_CHAIN: usize = 16;
/// Most peers one named list (the origin's or a link's) may hold to count.
pub const MAX_NAMED: usize = 16;

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
    /// announcer is the origin, one of the coordinators it named and signed, or one a chain of
    /// signed links leads to from them ([`JobAd::chain`]). What a peer that has not heard of
    /// the job requires (a forged ad is refused even by a newcomer). Costs at most
    /// `1 + MAX_CHAIN` signature checks, and only links whose signer is already vouched for
    /// are checked.
    pub fn origin_vouches(&self, verifier: &Verifier) -> bool {
        if crate::derive_job_id(&self.origin, &self.content_digest, &self.nonce) != self.job {
            return false;
        }
        if self.announcer == self.origin {
            return true;
        }
        let check = |signer: &PeerId, named: &[PeerId], sig: &[u8]| {
            named.len() <= MAX_NAMED && !sig.is_empty() && verifier(signer, &Self::named_signing_bytes(&self.job, named), sig)
        };
        let mut vouched: Vec<PeerId> = Vec::new();
        if check(&self.origin, &self.origin_named, &self.origin_signature) {
            vouched.extend(&self.origin_named);
        }
        if self.chain.len() <= MAX_CHAIN {
            for link in &self.chain {
                if vouched.contains(&self.announcer) {
                    break;
                }
                if (link.signer == self.origin || vouched.contains(&link.signer))
                    && check(&link.signer, &link.named, &link.signature)
                {
                    vouched.extend(&link.named);
                }
            }
        }
        vouched.contains(&self.announcer)
    }

    /// Signs, as the origin, the coordinators this ad names (no chain is needed after it).
    pub fn vouch(&mut self, signer: &Signer) {
        self.origin_named = self.coordinators.clone();
        self.origin_signature = signer(&Self::named_signing_bytes(&self.job, &self.origin_named));
        self.chain.clear();
    }

    /// Before its announcer (a coordinator, not the origin, signing with `signer`) announces the
    /// ad carrying the origin's word and the chain it knows: signs a link naming the ad's
    /// coordinators when one of them is not vouched for yet (a top-up added it), and drops the
    /// links none of them (nor the announcer) needs. Links are trusted as carried here (a
    /// newcomer checks them all); the announcer adds one only when it is vouched for itself.
    pub fn extend_chain(&mut self, signer: &Signer) {
        let me = self.announcer;
        // Which link first vouched each peer (`None`: the origin's own list).
        let mut by: std::collections::HashMap<PeerId, Option<usize>> = std::collections::HashMap::new();
        by.insert(self.origin, None);
        for p in &self.origin_named {
            by.insert(*p, None);
        }
        for (i, link) in self.chain.iter().enumerate() {
            if by.contains_key(&link.signer) {
                for p in &link.named {
                    by.entry(*p).or_insert(Some(i));
                }
            }
        }
        if by.contains_key(&me) && self.coordinators.len() <= MAX_NAMED && self.coordinators.iter().any(|c| !by.contains_key(c)) {
            let named = self.coordinators.clone();
            let signature = signer(&Self::named_signing_bytes(&self.job, &named));
            let at = self.chain.len();
            for p in &named {
                by.entry(*p).or_insert(Some(at));
            }
            self.chain.push(Named { signer: me, named, signature });
        }
        // Keep only the links on the way to a coordinator of this ad or its announcer.
        let mut needed = std::collections::BTreeSet::new();
        for c in self.coordinators.iter().chain([&self.announcer]) {
            let mut at = by.get(c).copied().flatten();
            while let Some(i) = at {
                if !needed.insert(i) {
                    break;
                }
                at = self.chain.get(i).and_then(|l| by.get(&l.signer).copied().flatten());
            }
        }
        let chain = std::mem::take(&mut self.chain);
        self.chain = chain.into_iter().enumerate().filter(|(i, _)| needed.contains(i)).map(|(_, l)| l).collect();
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

    /// The bytes that are signed: a domain tag and the record's encoding with an empty signature
    /// (its extension included, see [`Record::encode`]).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.signature_mut().clear();
        let mut out = DOMAIN.to_vec();
        out.extend(unsigned.encode());
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

    /// The wire encoding: the record's postcard form as earlier versions wrote it, then, when
    /// set, its extension ([`Advert::epoch`], [`JobAd::chain`]). A record without one encodes
    /// (and is signed) exactly as before, so earlier versions' records still decode and verify;
    /// earlier versions ignore the extension (and refuse the signature over it).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = postcard::to_stdvec(self).unwrap_or_default();
        let ext = match self {
            Record::Advert(a) if a.epoch != 0 => postcard::to_stdvec(&a.epoch),
            Record::JobAd(j) if !j.chain.is_empty() => postcard::to_stdvec(&j.chain),
            _ => return out,
        };
        out.extend(ext.unwrap_or_default());
        out
    }

    /// Decodes the wire encoding (see [`Record::encode`]).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (mut record, ext): (Record, &[u8]) = postcard::take_from_bytes(bytes).ok()?;
        if !ext.is_empty() {
            match &mut record {
                Record::Advert(a) => a.epoch = postcard::from_bytes(ext).ok()?,
                Record::JobAd(j) => j.chain = postcard::from_bytes(ext).ok()?,
            }
        }
        Some(record)
    }
}

/// A signed-looking advert of `peer` at `seq` from `addr`, for the membership modules' tests.
#[cfg(test)]
pub(crate) fn test_advert(peer: u8, seq: u64, addr: &str) -> Record {
    Record::Advert(Advert {
        peer: PeerId([peer; 32]),
        seq,
        addr: addr.into(),
        cpus_total: 1,
        cpus_free: 1,
        memory_bytes: 1,
        version: "v".into(),
        reachable: true,
        relays: Vec::new(),
        signature: vec![9; 64],
        epoch: 0,
    })
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
            epoch: 0,
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
        // The run's epoch, carried after the rest, is signed too.
        if let Record::Advert(a) = &mut r {
            a.epoch = 1_700_000_000_000;
        }
        r.sign(&fake_signer(1));
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        let mut moved = r.clone();
        if let Record::Advert(a) = &mut moved {
            a.epoch += 1;
        }
        assert!(r.verify(&fake_verifier()) && !moved.verify(&fake_verifier()));
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
            chain: Vec::new(),
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

    /// The ad `from` publishes after taking the job over and topping it up to `coordinators`,
    /// as `peer::mesh` makes it: the origin's word and chain carried, a link added.
    fn topped_up(from: &JobAd, announcer: u8, coordinators: &[u8]) -> JobAd {
        let mut next = JobAd {
            announcer: PeerId([announcer; 32]),
            coordinators: coordinators.iter().map(|c| PeerId([*c; 32])).collect(),
            seq: from.seq + 1,
            ..from.clone()
        };
        next.extend_chain(&fake_signer(announcer));
        next
    }

    #[test]
    fn a_coordinator_added_after_the_origin_is_vouched_for_by_the_chain() {
        let v = fake_verifier();
        // Origin 1 names 2; 2 leads and adds 3; 3 leads and adds 4; 4 leads alone.
        let mut first = derived(1, 1, &[1, 2]);
        first.vouch(&fake_signer(1));
        let by_2 = topped_up(&first, 2, &[2, 3]);
        assert_eq!(by_2.chain.len(), 1, "2 names 3, whom the origin did not");
        let by_3 = topped_up(&by_2, 3, &[3, 4]);
        let by_4 = topped_up(&by_3, 4, &[4]);
        assert_eq!(by_4.chain.len(), 2, "no link added: 4 is vouched for");
        for ad in [&by_2, &by_3, &by_4] {
            assert!(ad.origin_vouches(&v), "announced by {:?}", ad.announcer.0[0]);
        }
        // Without the chain (as before it existed), a newcomer refused 3's and 4's ads.
        assert!(!JobAd { chain: Vec::new(), ..by_4.clone() }.origin_vouches(&v));
        // A link signed by a peer nobody vouched for, or with a bad signature, is worth nothing.
        let mut forged = JobAd { announcer: PeerId([6; 32]), coordinators: vec![PeerId([6; 32])], ..by_4.clone() };
        forged.chain.push(Named {
            signer: PeerId([5; 32]),
            named: vec![PeerId([6; 32])],
            signature: fake_signer(5)(&JobAd::named_signing_bytes(&forged.job, &[PeerId([6; 32])])),
        });
        assert!(!forged.origin_vouches(&v), "5 was never named");
        forged.chain.last_mut().unwrap().signer = PeerId([4; 32]);
        assert!(!forged.origin_vouches(&v), "signed by 5, not by 4");
        let bad_link = JobAd { announcer: PeerId([3; 32]), ..by_3.clone() };
        let mut bad_link = bad_link;
        bad_link.chain[0].named.push(PeerId([7; 32]));
        assert!(!bad_link.origin_vouches(&v), "a link changed after it was signed");
        // Past the bound the chain is not followed.
        let mut long = by_4.clone();
        while long.chain.len() <= MAX_CHAIN {
            long.chain.insert(0, by_2.chain[0].clone());
        }
        assert!(!long.origin_vouches(&v));
        // The origin itself starts over.
        let mut back = JobAd { announcer: PeerId([1; 32]), ..by_4.clone() };
        back.vouch(&fake_signer(1));
        assert!(back.chain.is_empty() && back.origin_vouches(&v));
    }

    #[test]
    fn links_no_coordinator_needs_are_dropped() {
        let v = fake_verifier();
        let mut first = derived(1, 1, &[1, 2]);
        first.vouch(&fake_signer(1));
        // 2 adds 3, then 2 adds 4 in place of 3: only the second link is needed.
        let a = topped_up(&first, 2, &[2, 3]);
        let b = topped_up(&a, 2, &[2, 4]);
        assert_eq!(b.chain.len(), 1);
        assert_eq!(b.chain[0].named, vec![PeerId([2; 32]), PeerId([4; 32])]);
        assert!(topped_up(&b, 4, &[4]).origin_vouches(&v));
    }

    #[test]
    fn the_extension_is_encoded_after_what_earlier_versions_wrote() {
        let mut first = derived(1, 1, &[1, 2]);
        first.vouch(&fake_signer(1));
        let legacy = Record::JobAd(first.clone());
        // Without an extension, the bytes (and so the signed bytes) are what they were.
        assert_eq!(legacy.encode(), postcard::to_stdvec(&legacy).unwrap());
        let mut with_chain = Record::JobAd(topped_up(&first, 2, &[2, 3]));
        with_chain.sign(&fake_signer(2));
        assert_eq!(Record::decode(&with_chain.encode()), Some(with_chain.clone()));
        assert!(with_chain.verify(&fake_verifier()));
        // The chain is signed: dropping it breaks the announcer's signature.
        let mut stripped = with_chain.clone();
        if let Record::JobAd(j) = &mut stripped {
            j.chain.clear();
        }
        assert!(!stripped.verify(&fake_verifier()));
    }
}

