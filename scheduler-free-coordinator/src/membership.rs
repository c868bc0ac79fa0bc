//! Membership: who is in the mesh and whether they answer, by SWIM (the `foca` crate, itself a
//! sans-IO state machine), plus the signed records ([`Advert`]s and [`JobAd`]s) that ride along
//! with its messages. The driver feeds in received bytes and the time; it drains bytes to send
//! (to a member's address) and [`MeshEvent`]s. No sockets, no clock, no threads.
//!
//! Wire framing of what [`Membership::poll_send`] yields: one tag byte, then a foca packet (`0`),
//! a postcard list of encoded records sent directly to one member (`1`), a hello (`2`): the
//! postcard [`Member`] of a peer joining through an address whose peer it does not know yet; the
//! receiver answers with a SWIM announce to it, and SWIM takes over), or a digest (`3`): what
//! the sender holds, summed up (see [`Membership::answer_digest`]).
//!
//! What it costs: a record goes by gossip only when it is news (published or changed), and an
//! advert received directly is not re-gossiped (a job's ad is); a member that comes up gets each peer's own
//! records straight from that peer, and lost news of a job is repaired by the digests (one small
//! message per peer per [`MembershipConfig::digest_period_ms`]), not by re-sending what did not
//! change. So a quiet mesh carries SWIM's probes and little else, whatever its size.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compact_str::CompactString;
use foca::{BroadcastHandler, Config, Foca, Identity, Invalidates, Notification, PostcardCodec, Runtime, State, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::records::{Advert, JobAd, Record, RecordKey, Verifier};
use crate::{Millis, PeerId};

mod held;
mod pool;
mod quota;
mod screen;
pub use pool::RecordPool;
pub use quota::MAX_RECORDS_PER_SIGNER;
pub use screen::{EPOCH_SKEW_MS, MAX_CHECKS, MAX_MEMBERS, TURN_UNDEAD_EVERY_MS};

const TAG_FOCA: u8 = 0;
const TAG_RECORDS: u8 = 1;
const TAG_HELLO: u8 = 2;
const TAG_DIGEST: u8 = 3;
/// Most records held; past it, ads of finished jobs make room, and otherwise new keys are
/// refused (a flood of freshly signed records cannot grow memory).
pub const MAX_RECORDS: usize = 200_000;
/// Most rival ads remembered as already reported (forgotten all at once past it).
const MAX_RIVALS_SEEN: usize = 4_096;
/// Most dead members greeted per round (see [`Membership::greet_dead_members`]).
const MAX_DEAD_HELLOS: usize = 4;
/// Most events (or messages) a drained queue keeps room for: a burst (a newcomer's sync brings
/// its view's adverts at once) does not leave every membership holding room for the next one.
const KEEP_EVENTS: usize = 8;
/// Most records one direct sync message carries.
const MAX_SYNC_RECORDS: usize = 256;
/// Most greeted addresses remembered until their peer comes up (forgotten all at once past it).
const MAX_GREETED: usize = 64;
/// How often members held suspect are looked at (see `Membership::end_stale_suspicions`).
const SUSPECT_SCAN_EVERY_MS: Millis = 1_000;
/// When the first digest goes (plus up to as much again, by the seed).
const FIRST_DIGEST_MS: Millis = 3_000;
/// How often a few members held dead are greeted at their address.
const DEAD_HELLO_EVERY_MS: Millis = 20_000;
/// Least time between two pushes of news heard (a job's ad, new or changed) straight to
/// random members: news in between goes with the push after or the periodic gossip.
pub const NEWS_PUSH_EVERY_MS: Millis = 50;
/// Most members told directly that this peer leaves ([`Membership::leave`]); the rest hear it
/// from them.
pub const MAX_LEAVE_NOTICES: usize = 64;

/// A member as SWIM knows it: the peer, where to reach it, and the epoch of its current run (a
/// restart or a rejoin after being declared dead takes a larger epoch, which wins).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The peer.
    pub peer: PeerId,
    /// Its gRPC address (host:port), inline when up to 24 bytes (any IPv4 address with its
    /// port): each membership holds one per member, and cloning it allocates nothing.
    pub addr: CompactString,
    /// Larger for a later run of the same peer.
    pub epoch: u64,
}

impl Identity for Member {
    type Addr = PeerId;

    fn renew(&self) -> Option<Self> {
        Some(Member { epoch: self.epoch + 1, ..self.clone() })
    }

    fn addr(&self) -> PeerId {
        self.peer
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.epoch > adversary.epoch
    }
}

/// How a member looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering.
    Alive,
    /// Someone could not reach it; it has a while to refute.
    Suspect,
    /// Declared dead.
    Dead,
}

/// What membership tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshEvent {
    /// A member became active.
    PeerUp(Member),
    /// A member was declared dead.
    PeerDown(Member),
    /// A new or newer record arrived (already verified).
    Record(Record),
    /// A correctly signed ad of a known job from an announcer the known ad does not name: after
    /// a partition heals, each side's coordinator has announced the job alone. Not taken, and
    /// nobody is blamed; the job's coordinators settle it (`peer::host`, by the rules of `peer::heal`).
    Rival(JobAd),
    /// A record with a bad or missing signature, or that did not decode, was dropped.
    Invalid {
        /// The member that sent it, when known.
        sender: Option<PeerId>,
    },
    /// This peer is known by at least one active member.
    Joined,
    /// Every known member left or died.
    Idle,
}

/// Timings and sizes of membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often a random member is probed.
    pub probe_period_ms: u64,
    /// How long a probe waits before asking others to probe indirectly.
    pub probe_rtt_ms: u64,
    /// How long a suspect has to refute before it is declared dead.
    pub suspect_to_down_ms: u64,
    /// How often updates are gossiped to a few members.
    pub gossip_period_ms: u64,
    /// How often this peer re-announces itself to a random member (heals partitions; each is
    /// answered with a feed of members, the largest message SWIM sends).
    pub announce_period_ms: u64,
    /// How often this peer sends one random member a digest of the unfinished job ads it holds.
    pub digest_period_ms: u64,
    /// How long a dead member is remembered (it cannot rejoin with the same epoch meanwhile).
    pub remove_down_after_ms: u64,
    /// Largest message, in bytes.
    pub max_packet_bytes: usize,
    /// Expected mesh size; sets how many times an update is retransmitted.
    pub cluster_size: u32,
}

impl MembershipConfig {
    /// Settings for peers on one network (loopback, LAN): failures noticed in a few seconds.
    pub fn lan(cluster_size: u32) -> MembershipConfig {
        MembershipConfig {
            probe_period_ms: 1_000,
            probe_rtt_ms: 500,
            suspect_to_down_ms: 4_000,
            gossip_period_ms: 500,
            announce_period_ms: 60_000,
            digest_period_ms: 30_000,
            // Remembered long enough that the periodic announces to dead members (below) can
            // heal a partition of several minutes.
            remove_down_after_ms: 10 * 60_000,
            max_packet_bytes: 16 << 10,
            cluster_size: cluster_size.max(2),
        }
    }

    fn foca(&self) -> Config {
        let mut c = Config::new_lan(NonZeroU32::new(self.cluster_size.max(2)).unwrap_or(NonZeroU32::MIN));
        c.probe_period = Duration::from_millis(self.probe_period_ms);
        c.probe_rtt = Duration::from_millis(self.probe_rtt_ms);
        c.suspect_to_down_after = Duration::from_millis(self.suspect_to_down_ms);
        c.remove_down_after = Some(Duration::from_millis(self.remove_down_after_ms));
        c.max_packet_size = NonZeroUsize::new(self.max_packet_bytes).unwrap_or(NonZeroUsize::MIN);
        c.max_transmissions = NonZeroU8::new(c.max_transmissions.get().max(4)).unwrap_or(NonZeroU8::MIN);
        if let Some(g) = c.periodic_gossip.as_mut() {
            g.frequency = Duration::from_millis(self.gossip_period_ms);
            g.num_members = NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN);
        }
        if let Some(a) = c.periodic_announce.as_mut() {
            a.frequency = Duration::from_millis(self.announce_period_ms);
        }
        if let Some(a) = c.periodic_announce_to_down_members.as_mut() {
            a.frequency = Duration::from_millis(DEAD_HELLO_EVERY_MS);
        }
        c
    }
}

/// Why received bytes were not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Empty, or an unknown tag.
    #[error("malformed membership message")]
    Malformed,
    /// foca refused the packet.
    #[error("membership packet refused: {0}")]
    Refused(String),
}

/// Records known, shared between [`Membership`] and foca's broadcast handler (which foca owns).
struct RecordState {
    /// Shared, so that a [`RecordPool`] can give many memberships one copy of a record.
    records: held::Held,
    /// Where taken records are kept when memberships share them (see [`Membership::share_records`]).
    pool: Option<RecordPool>,
    verifier: Verifier,
    events: VecDeque<MeshEvent>,
    /// Set while this peer hands foca a record it has already taken, to be disseminated.
    relaying: bool,
    /// Rival ads already reported (job, announcer, seq), so gossip's copies are reported once.
    rivals_seen: HashSet<(RecordKey, PeerId, u64)>,
    /// The authenticated sender of the message being handled (foca's own sender field is
    /// whatever the packet claims, so it is not used to blame anyone).
    sender: Option<PeerId>,
    /// Who may add records, and how many each signer holds.
    admission: quota::Admission,
    /// A job's ad was heard from another peer and taken since the last push of news
    /// ([`Membership::push_news`]); set where records are heard, not where they are taken.
    news: bool,
}

impl RecordState {
    /// Takes a record if it verifies and is newer than what is known. Returns whether it was.
    fn accept(&mut self, bytes: &[u8], sender: Option<PeerId>) -> Option<(RecordKey, u64)> {
        let Some(record) = Record::decode(bytes) else {
            self.events.push_back(MeshEvent::Invalid { sender });
            return None;
        };
        self.take(record, sender)
    }

    /// [`RecordState::accept`] for a record decoded already.
    fn take(&mut self, record: Record, sender: Option<PeerId>) -> Option<(RecordKey, u64)> {
        let key = record.key();
        let known = self.records.get(&key);
        // A job's ad is replaced only by its announcer or a coordinator it names; an ad from
        // anyone else is a rival, whatever its sequence number.
        let rival = known.is_some_and(|k| !record.may_replace(k));
        // Old news is dropped before the signature check: most copies of a record that gossip
        // delivers are duplicates, and a check costs far more than a comparison. A rival seen
        // before is old news too.
        if !rival && known.is_some_and(|k| k.seq() >= record.seq()) {
            return None;
        }
        let rival_tag = (key, record.signer(), record.seq());
        if rival && self.rivals_seen.contains(&rival_tag) {
            return None;
        }
        // A job first heard of is taken only if its origin vouches for the ad (its id derived
        // by the origin, the announcer the origin or one it named); later versions by
        // `may_replace`. Dropped without blame: an honest peer relays an ad it took as a
        // replacement, which a newcomer cannot check.
        if let (None, Record::JobAd(ad)) = (known, &record)
            && !ad.origin_vouches(&self.verifier)
        {
            return None;
        }
        let replacing = known.map(Record::signer);
        let has_advert = self.records.contains_key(&RecordKey::Advert(record.signer()));
        if !self.admission.admits(&record, replacing, sender, has_advert) {
            return None;
        }
        // A copy of a record another membership of this process checked needs no second check.
        let checked = self.pool.as_ref().and_then(|pool| pool.checked(&record, &self.verifier));
        if checked.is_none() && !record.verify(&self.verifier) {
            self.events.push_back(MeshEvent::Invalid { sender });
            return None;
        }
        if rival {
            if let Record::JobAd(ad) = record {
                if self.rivals_seen.len() >= MAX_RIVALS_SEEN {
                    self.rivals_seen.clear();
                }
                self.rivals_seen.insert(rival_tag);
                self.events.push_back(MeshEvent::Rival(ad));
            }
            return None;
        }
        if !self.records.contains_key(&key) && self.records.len() >= MAX_RECORDS {
            let done = self.records.iter().find(|(_, r)| matches!(r, Record::JobAd(j) if j.done)).map(|(k, _)| *k);
            match done {
                Some(k) => {
                    if let Some(r) = self.records.remove(&k) {
                        self.admission.removed(&r.record);
                    }
                }
                None => return None,
            }
        }
        let seq = record.seq();
        self.admission.stored(&record, replacing);
        let held = match (checked, &self.pool) {
            (Some(held), _) => held,
            (None, Some(pool)) => pool.intern(&record, &self.verifier),
            (None, None) => Arc::new(held::Keyed::new(record.clone())),
        };
        self.records.insert(held);
        self.events.push_back(MeshEvent::Record(record));
        Some((key, seq))
    }
}

/// foca's view of a record in its dissemination backlog.
struct Versioned(RecordKey, u64);

impl Invalidates for Versioned {
    fn invalidates(&self, other: &Self) -> bool {
        self.0 == other.0 && self.1 >= other.1
    }
}

struct Handler(Arc<Mutex<RecordState>>);

impl BroadcastHandler<Member> for Handler {
    type Key = Versioned;
    type Error = std::convert::Infallible;

    fn receive_item(&mut self, data: &[u8], _claimed: Option<&Member>) -> Result<Option<Versioned>, Self::Error> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if state.relaying {
            return Ok(Record::decode(data).map(|r| Versioned(r.key(), r.seq())));
        }
        let sender = state.sender;
        let taken = state.accept(data, sender);
        state.news |= matches!(taken, Some((RecordKey::JobAd(_), _)));
        Ok(taken.map(|(k, s)| Versioned(k, s)))
    }
}

/// What foca asks of the world during one call, collected for the driver.
struct Collect<'a> {
    now: Millis,
    timers: &'a mut BTreeMap<(Millis, u64), Timer<Member>>,
    next_timer: &'a mut Option<Millis>,
    timer_seq: &'a mut u64,
    out: &'a mut VecDeque<(Member, Vec<u8>)>,
    events: &'a mut VecDeque<MeshEvent>,
    newcomers: &'a mut Vec<Member>,
}

impl Runtime<Member> for Collect<'_> {
    fn notify(&mut self, n: Notification<'_, Member>) {
        match n {
            Notification::MemberUp(m) => {
                self.newcomers.push(m.clone());
                self.events.push_back(MeshEvent::PeerUp(m.clone()));
            }
            Notification::MemberDown(m) => self.events.push_back(MeshEvent::PeerDown(m.clone())),
            // A member back under a new identity restarted (or rejoined after being declared
            // dead): it holds no records, so it is synced like any newcomer.
            Notification::Rename(_, to) => {
                self.newcomers.push(to.clone());
                self.events.push_back(MeshEvent::PeerUp(to.clone()));
            }
            Notification::Active | Notification::Rejoin(_) => self.events.push_back(MeshEvent::Joined),
            Notification::Idle => self.events.push_back(MeshEvent::Idle),
            Notification::Defunct => {}
        }
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        let mut framed = Vec::with_capacity(data.len() + 1);
        framed.push(TAG_FOCA);
        framed.extend_from_slice(data);
        self.out.push_back((to, framed));
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        *self.timer_seq += 1;
        let due = self.now.saturating_add(after.as_millis() as Millis);
        self.timers.insert((due, *self.timer_seq), event);
        *self.next_timer = Some(self.next_timer.map_or(due, |at| at.min(due)));
    }
}

/// This peer's membership state.
pub struct Membership {
    foca: Foca<Member, PostcardCodec, SmallRng, Handler>,
    shared: Arc<Mutex<RecordState>>,
    timers: BTreeMap<(Millis, u64), Timer<Member>>,
    /// When the first of `timers` is due, kept beside them: the driver asks after every
    /// message, and reaching into the map for it was a fiftieth of the simulator's time.
    next_timer: Option<Millis>,
    timer_seq: u64,
    out: VecDeque<(Member, Vec<u8>)>,
    events: VecDeque<MeshEvent>,
    /// Records this peer authored, sent directly to every newcomer.
    own: BTreeSet<RecordKey>,
    /// The records of the last sync (see [`Membership::sync_to`]) and its messages: each
    /// newcomer gets the same ones until a record changes, so they are not encoded again for
    /// every member that comes up.
    sync_cache: (Vec<Arc<held::Keyed>>, Vec<Vec<u8>>),
    max_packet: usize,
    /// How often dead members are greeted at their address, and when next.
    down_hello_every: Millis,
    next_down_hello: Millis,
    /// How often a digest goes to a random member, and when next.
    digest_every: Millis,
    first_digest_in: Millis,
    /// Set at the first tick.
    next_digest: Option<Millis>,
    /// When news heard may next be pushed ([`NEWS_PUSH_EVERY_MS`]).
    next_news_push: Millis,
    /// Picks the digest's member (seeded, so a simulated run repeats).
    rng: SmallRng,
    /// Where the next round of greetings starts among the dead members.
    down_cursor: usize,
    /// Members held suspect, since when (at which incarnation), to end suspicions whose timer
    /// foca dropped (see [`Membership::end_stale_suspicions`]).
    suspects: HashMap<PeerId, (foca::Incarnation, Millis)>,
    /// How long a suspicion may last before it is ended here, and when next to look.
    stale_suspicion_ms: Millis,
    next_suspect_scan: Millis,
    /// Addresses greeted whose peer has not come up yet (at most [`MAX_GREETED`]).
    greeted: HashSet<String>,
    /// What packets may claim, and the checks of claims in flight (see `screen`).
    screen: screen::Screen,
    /// foca's configuration, to widen its fan-out for a leave.
    foca_config: Config,
    /// How long a checked member has to answer, and then to refute this peer's suspicion.
    check_ms: Millis,
    check_suspect_ms: Millis,
    /// When the adverts of peers SWIM forgot are next swept.
    next_expiry: Millis,
}

impl Membership {
    /// Membership for `me`, with foca's randomness seeded by `seed`.
    pub fn new(me: Member, config: MembershipConfig, seed: u64, verifier: Verifier) -> Membership {
        let shared = Arc::new(Mutex::new(RecordState {
            records: held::Held::default(),
            pool: None,
            verifier,
            events: VecDeque::new(),
            relaying: false,
            rivals_seen: HashSet::new(),
            sender: None,
            admission: quota::Admission::default(),
            news: false,
        }));
        shared.lock().unwrap_or_else(|p| p.into_inner()).admission.know(me.peer);
        let foca_config = config.foca();
        let foca = Foca::with_custom_broadcast(
            me,
            foca_config.clone(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
            Handler(shared.clone()),
        );
        Membership {
            foca,
            shared,
            timers: BTreeMap::new(),
            next_timer: None,
            timer_seq: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            own: BTreeSet::new(),
            sync_cache: (Vec::new(), Vec::new()),
            max_packet: config.max_packet_bytes,
            down_hello_every: DEAD_HELLO_EVERY_MS,
            next_down_hello: 0,
            digest_every: config.digest_period_ms.max(1),
            // The first one a few seconds in, once a joiner has heard from a few members, when
            // what it missed of the join wave is most likely; spread so peers started together
            // do not send theirs together.
            first_digest_in: FIRST_DIGEST_MS + seed % FIRST_DIGEST_MS,
            next_digest: None,
            next_news_push: 0,
            rng: SmallRng::seed_from_u64(seed ^ 0x00d1_6e57),
            down_cursor: 0,
            greeted: HashSet::new(),
            suspects: HashMap::new(),
            // Twice foca's own suspicion time, so a suspicion its timer still tracks ends there.
            stale_suspicion_ms: config.suspect_to_down_ms.saturating_mul(2).max(1),
            next_suspect_scan: 0,
            screen: screen::Screen::default(),
            check_ms: config.probe_rtt_ms.max(1),
            check_suspect_ms: config.suspect_to_down_ms,
            next_expiry: quota::EXPIRE_EVERY_MS,
            foca_config,
        }
    }

    /// Keeps the records this membership takes in `pool`, shared with the other memberships
    /// given the same pool (one copy of each instead of one per membership). For a process
    /// holding many memberships, as the simulator does; call it before any record is taken.
    pub fn share_records(&mut self, pool: RecordPool) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).pool = Some(pool);
    }

    /// This peer as a member.
    pub fn me(&self) -> &Member {
        self.foca.identity()
    }

    fn with<R>(&mut self, now: Millis, f: impl FnOnce(&mut Foca<Member, PostcardCodec, SmallRng, Handler>, &mut Collect<'_>) -> R) -> R {
        let (r, newcomers) = self.drive(now, f);
        for m in newcomers {
            // A peer greeted by address is now known by identity: announcing to it brings its
            // feed of members, so a joiner learns the mesh in one round trip rather than one
            // probe at a time.
            if self.greeted.remove(m.addr.as_str()) {
                self.announce_to(m.clone(), now);
            }
            self.sync_to(m);
        }
        r
    }

    /// Calls `f` on foca with this membership's runtime; returns what it returned and the
    /// members that came up meanwhile (admitted to the record quota already).
    fn drive<R>(
        &mut self,
        now: Millis,
        f: impl FnOnce(&mut Foca<Member, PostcardCodec, SmallRng, Handler>, &mut Collect<'_>) -> R,
    ) -> (R, Vec<Member>) {
        let mut newcomers = Vec::new();
        let r = {
            let mut rt = Collect {
                now,
                timers: &mut self.timers,
                next_timer: &mut self.next_timer,
                timer_seq: &mut self.timer_seq,
                out: &mut self.out,
                events: &mut self.events,
                newcomers: &mut newcomers,
            };
            f(&mut self.foca, &mut rt)
        };
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        move_events(&mut shared.events, &mut self.events);
        for m in &newcomers {
            shared.admission.know(m.peer);
        }
        drop(shared);
        (r, newcomers)
    }

    /// Takes `members` (alive) and signed `records` as known already, by this peer and by the
    /// mesh: nothing is sent and nothing queued for gossip, as foca's `apply_many` without
    /// broadcast restores a view. Each is taken as any other, records through their signature
    /// check; the members come up as events. For a view whose mesh formed before (the
    /// simulator's start, `spare sim` without `--cold-start`), not for news: news is gossiped.
    pub fn restore(&mut self, members: impl IntoIterator<Item = Member>, records: &[Record], now: Millis) {
        {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            for record in records {
                shared.take(record.clone(), None);
            }
            move_events(&mut shared.events, &mut self.events);
        }
        let me = self.foca.identity().peer;
        let updates = members.into_iter().filter(|m| m.peer != me).map(foca::Member::alive);
        // Only this peer's own member could be refused, and it was filtered out.
        let _ = self.drive(now, |foca, rt| foca.apply_many(updates, false, rt));
    }

    /// SWIM's announce to `m` (answered with a feed of its members). Not generic, so the call
    /// from [`Membership::with`] instantiates `with` once more, not without end.
    fn announce_to(&mut self, m: Member, now: Millis) {
        let _ = self.with(now, |foca, rt| foca.announce(m, rt));
    }

    /// Joins the mesh through a peer known only by its address: says hello, and the peer there
    /// announces itself back (SWIM only accepts an announce addressed to its own identity).
    pub fn join(&mut self, addr: &str, _now: Millis) {
        let placeholder = Member { peer: PeerId([0; 32]), addr: addr.into(), epoch: 0 };
        let hello = postcard::to_stdvec(self.foca.identity()).unwrap_or_default();
        self.out.push_back((placeholder, frame(TAG_HELLO, &hello)));
        if self.greeted.len() >= MAX_GREETED {
            self.greeted.clear();
        }
        self.greeted.insert(addr.to_string());
    }

    /// Takes bytes another peer sent; `sender` is that peer when the transport authenticated it
    /// (a bad record in the message is then held against it).
    pub fn handle_data(&mut self, data: &[u8], sender: Option<PeerId>, now: Millis) -> Result<(), MembershipError> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).sender = sender;
        let r = self.dispatch(data, sender, now);
        let news = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            shared.sender = None;
            std::mem::take(&mut shared.news)
        };
        if news {
            self.push_news(now);
        }
        r
    }

    /// Sends a job's ad just heard on to random members now (foca's gossip, which carries it
    /// with whatever else is due), rather than only with the next message that goes anyway: it
    /// is what idle peers wait for, and in a calm mesh the next message is a probe period
    /// away, so an ad crossed a hundred peers in four seconds. At most one push per
    /// [`NEWS_PUSH_EVERY_MS`]; a news held back goes with the next push or gossip.
    fn push_news(&mut self, now: Millis) {
        if now < self.next_news_push || self.foca.num_members() == 0 {
            return;
        }
        self.next_news_push = now.saturating_add(NEWS_PUSH_EVERY_MS);
        let _ = self.with(now, |foca, rt| foca.gossip(rt));
    }

    fn dispatch(&mut self, data: &[u8], sender: Option<PeerId>, now: Millis) -> Result<(), MembershipError> {
        match data.split_first() {
            Some((&TAG_FOCA, packet)) => {
                // foca's own limit, checked here for a packet it gets decoded.
                if packet.len() > self.max_packet {
                    return Err(MembershipError::Refused(foca::Error::DataTooBig.to_string()));
                }
                let r = match self.screen_packet(packet, sender, now)? {
                    screen::Screened::Whole(packet) => self.with(now, |foca, rt| foca.handle_data(packet, rt)),
                    screen::Screened::Decoded(header, kept, custom) => {
                        self.with(now, |foca, rt| foca.handle_decoded(header, kept.into_iter(), custom, rt))
                    }
                };
                r.map_err(|e| MembershipError::Refused(e.to_string()))
            }
            Some((&TAG_HELLO, body)) => {
                let joiner: Member = postcard::from_bytes(body).map_err(|_| MembershipError::Malformed)?;
                self.screen_hello(&joiner, sender)?;
                if joiner.peer == self.foca.identity().peer {
                    return Ok(());
                }
                self.with(now, |foca, rt| foca.announce(joiner, rt)).map_err(|e| MembershipError::Refused(e.to_string()))
            }
            Some((&TAG_RECORDS, body)) => {
                let list: Vec<Vec<u8>> = postcard::from_bytes(body).map_err(|_| MembershipError::Malformed)?;
                // An advert is taken, not re-gossiped: whoever else lacks it gets it the same way
                // (every member sends its own to each member that comes up). News of a job is
                // gossiped on: it is what idle peers are waiting for, and there are few.
                let mut news = Vec::new();
                let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                for bytes in list.iter().take(MAX_SYNC_RECORDS) {
                    if let Some((RecordKey::JobAd(_), _)) = shared.accept(bytes, sender) {
                        news.push(bytes);
                    }
                }
                shared.news |= !news.is_empty();
                move_events(&mut shared.events, &mut self.events);
                drop(shared);
                for bytes in news {
                    self.relay(bytes);
                }
                Ok(())
            }
            Some((&TAG_DIGEST, body)) => {
                let digest = Digest::decode(body).ok_or(MembershipError::Malformed)?;
                self.answer_digest(digest, sender, now);
                Ok(())
            }
            _ => Err(MembershipError::Malformed),
        }
    }

    /// Acts on a digest, replying only to what differs: the unfinished job ads held here when
    /// the sender's sum of them differs from this peer's, and, when the two count different
    /// members, a reply digest (so the one that knows fewer asks the other for its feed of
    /// members) and an announce when the sender knows more. Everything goes to the member the
    /// transport authenticated, never to an address the message claims.
    fn answer_digest(&mut self, theirs: Digest, sender: Option<PeerId>, now: Millis) {
        let Some(to) = sender.and_then(|p| self.active_member(&p)) else { return };
        let mine = self.digest(theirs.reply);
        if mine.jobs != theirs.jobs && !theirs.reply {
            let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let ads: Vec<Vec<u8>> = unfinished_ads(&shared.records).map(|(_, r)| r.encode()).collect();
            drop(shared);
            self.send_records(to.clone(), ads);
        }
        if mine.members != theirs.members && !theirs.reply {
            let reply = Digest { reply: true, ..mine };
            self.out.push_back((to.clone(), frame(TAG_DIGEST, &reply.encode())));
        }
        if theirs.members > mine.members {
            self.announce_to(to, now);
        }
    }

    /// What this peer holds, summed up.
    fn digest(&self, reply: bool) -> Digest {
        let jobs = job_digest(&self.shared.lock().unwrap_or_else(|p| p.into_inner()).records);
        // Alive ones only: a member held suspect here while others hold it alive (its
        // refutation missed this peer) makes the counts differ, and the feed that follows
        // carries its newer incarnation.
        let alive = self.foca.iter_membership_state().filter(|m| m.state() == State::Alive).count();
        let members = u32::try_from(alive + 1).unwrap_or(u32::MAX);
        Digest { jobs, members, reply }
    }

    /// The member `peer` if it is alive or suspect.
    fn active_member(&self, peer: &PeerId) -> Option<Member> {
        self.foca.iter_members().find(|m| m.id().peer == *peer).map(|m| m.id().clone())
    }

    /// Sends one random active member the digest of the unfinished job ads held here.
    fn send_digest(&mut self) {
        let n = self.foca.num_members();
        if n == 0 {
            return;
        }
        let pick = rand::RngExt::random_range(&mut self.rng, 0..n);
        let Some(to) = self.foca.iter_members().nth(pick).map(|m| m.id().clone()) else { return };
        let digest = self.digest(false);
        self.out.push_back((to, frame(TAG_DIGEST, &digest.encode())));
    }

    /// Hands foca a record already taken, for dissemination.
    fn relay(&mut self, bytes: &[u8]) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).relaying = true;
        let _ = self.foca.add_broadcast(bytes);
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).relaying = false;
    }

    /// Tells the mesh this peer leaves, at shutdown: SWIM's leave (its own death, which members
    /// take at once from the peer itself) goes to every active member, up to
    /// [`MAX_LEAVE_NOTICES`], rather than to foca's usual three. Membership is over after it:
    /// send what it queued, then stop.
    pub fn leave(&mut self, now: Millis) {
        let fanout = self.active().clamp(1, MAX_LEAVE_NOTICES);
        let mut c = self.foca_config.clone();
        c.num_indirect_probes = NonZeroUsize::new(fanout).unwrap_or(NonZeroUsize::MIN);
        // Each notice carries the leave only while it has transmissions left.
        let sends = u8::try_from(fanout).unwrap_or(u8::MAX).max(c.max_transmissions.get());
        c.max_transmissions = NonZeroU8::new(sends).unwrap_or(NonZeroU8::MIN);
        let _ = self.foca.set_config(c);
        let _ = self.with(now, |foca, rt| foca.leave_cluster(rt));
    }

    /// Fires due timers.
    pub fn tick(&mut self, now: Millis) {
        while let Some((&(due, seq), _)) = self.timers.first_key_value() {
            if due > now {
                break;
            }
            let Some(timer) = self.timers.remove(&(due, seq)) else { break };
            let _ = self.with(now, |foca, rt| foca.handle_timer(timer, rt));
        }
        self.next_timer = self.timers.first_key_value().map(|(&(due, _), _)| due);
        if now >= self.next_down_hello {
            self.next_down_hello = now.saturating_add(self.down_hello_every);
            self.greet_dead_members();
        }
        if now >= self.next_suspect_scan {
            self.next_suspect_scan = now.saturating_add(SUSPECT_SCAN_EVERY_MS);
            self.end_stale_suspicions(now);
        }
        self.end_checks(now);
        if now >= self.next_expiry {
            self.next_expiry = now.saturating_add(quota::EXPIRE_EVERY_MS);
            self.expire_forgotten();
        }
        let next_digest = *self.next_digest.get_or_insert(now.saturating_add(self.first_digest_in));
        if now >= next_digest {
            self.next_digest = Some(now.saturating_add(self.digest_every));
            self.send_digest();
        }
    }

    /// Forgets the adverts of peers SWIM no longer knows (dead for longer than
    /// `remove_down_after`): what a peer long gone said of itself is no use, and keeping it
    /// would let the map grow with every key ever seen.
    fn expire_forgotten(&mut self) {
        let mut known: HashSet<PeerId> = self.foca.iter_membership_state().map(|m| m.id().peer).collect();
        known.insert(self.foca.identity().peer);
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.admission.set_known(known);
        let gone = quota::expired(shared.records.keys(), &shared.admission);
        for key in gone {
            if let Some(r) = shared.records.remove(&key) {
                shared.admission.removed(&r.record);
            }
        }
    }

    /// Declares dead, as its timer would have, a member held suspect (at one incarnation) for
    /// longer than twice the suspicion time. foca drops every pending timer when it learns this
    /// peer was itself declared down (as both sides of a partition do of each other), so a
    /// suspicion it held then never ended: the member stayed suspect for good, neither dead (so
    /// never greeted again) nor alive. Once dead, the hellos to dead members bring it back.
    fn end_stale_suspicions(&mut self, now: Millis) {
        let held: Vec<(Member, foca::Incarnation)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.suspects.retain(|p, (inc, _)| held.iter().any(|(m, i)| m.peer == *p && i == inc));
        let mut stale = Vec::new();
        for (m, inc) in held {
            let (_, since) = *self.suspects.entry(m.peer).or_insert((inc, now));
            if now.saturating_sub(since) >= self.stale_suspicion_ms {
                stale.push(foca::Member::new(m, inc, State::Down));
            }
        }
        if !stale.is_empty() {
            for m in &stale {
                self.suspects.remove(&m.id().peer);
            }
            let _ = self.with(now, |foca, rt| foca.apply_many(stale.into_iter(), true, rt));
        }
    }

    /// Sends a hello to the address of a few members declared dead. After a partition heals,
    /// a member declared dead here may be alive under a newer epoch; SWIM's own announces are
    /// addressed to the identity it knew and are dropped there, while a hello makes the member
    /// announce itself back with its current identity.
    fn greet_dead_members(&mut self) {
        let dead: Vec<CompactString> =
            self.foca.iter_membership_state().filter(|m| m.state() == State::Down).map(|m| m.id().addr.clone()).collect();
        if dead.is_empty() {
            return;
        }
        let hello = postcard::to_stdvec(self.foca.identity()).unwrap_or_default();
        for i in 0..dead.len().min(MAX_DEAD_HELLOS) {
            let addr = &dead[(self.down_cursor + i) % dead.len()];
            let placeholder = Member { peer: PeerId([0; 32]), addr: addr.clone(), epoch: 0 };
            self.out.push_back((placeholder, frame(TAG_HELLO, &hello)));
        }
        self.down_cursor = (self.down_cursor + MAX_DEAD_HELLOS) % dead.len();
    }

    /// When [`Membership::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        let timer = self.next_timer;
        let check = self.screen.next_check();
        timer.into_iter().chain(check).min()
    }

    /// Spreads a record this peer signed (a newer version replaces the older one everywhere).
    pub fn publish(&mut self, record: Record, now: Millis) -> bool {
        let key = record.key();
        let bytes = record.encode();
        if bytes.len() + 64 > self.max_packet {
            return false;
        }
        let fresh = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = shared.accept(&bytes, None).is_some();
            // Our own news is not news to us.
            shared.events.retain(|e| !matches!(e, MeshEvent::Record(r) if r.key() == key));
            fresh
        };
        if fresh {
            self.own.insert(key);
            // Alone, there is no one to tell: every member that comes up gets it directly.
            if self.foca.num_members() > 0 {
                self.relay(&bytes);
                // News goes out now rather than with the next periodic gossip.
                let _ = self.with(now, |foca, rt| foca.gossip(rt));
            }
        }
        fresh
    }

    /// Sends this peer's own records straight to a member that just came up, so a newcomer
    /// learns every advert and job without waiting for them to be re-gossiped.
    fn sync_to(&mut self, m: Member) {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let own: Vec<Arc<held::Keyed>> = self
            .own
            .iter()
            .filter_map(|key| shared.records.get_shared(key))
            .filter(|r| !matches!(&r.record, Record::JobAd(j) if j.done))
            .cloned()
            .collect();
        drop(shared);
        let (held, messages) = &self.sync_cache;
        if own.len() != held.len() || !own.iter().zip(held).all(|(a, b)| Arc::ptr_eq(a, b)) {
            let messages = self.batches(own.iter().map(|r| r.record.encode()).collect());
            self.sync_cache = (own, messages);
        } else if messages.is_empty() {
            return;
        }
        for message in &self.sync_cache.1 {
            self.out.push_back((m.clone(), message.clone()));
        }
    }

    /// Queues `records` to `m`, as many messages as the packet size and
    /// [`MAX_SYNC_RECORDS`] allow.
    fn send_records(&mut self, m: Member, records: Vec<Vec<u8>>) {
        for message in self.batches(records) {
            self.out.push_back((m.clone(), message));
        }
    }

    /// `records` in as few messages as the packet size and [`MAX_SYNC_RECORDS`] allow.
    fn batches(&self, records: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut messages = Vec::new();
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        for bytes in records {
            if size + bytes.len() + 16 > self.max_packet || batch.len() >= MAX_SYNC_RECORDS {
                let body = postcard::to_stdvec(&batch).unwrap_or_default();
                messages.push(frame(TAG_RECORDS, &body));
                batch.clear();
                size = 0;
            }
            size += bytes.len() + 4;
            batch.push(bytes);
        }
        if !batch.is_empty() {
            let body = postcard::to_stdvec(&batch).unwrap_or_default();
            messages.push(frame(TAG_RECORDS, &body));
        }
        messages
    }

    /// The next message to send: to whom, and the bytes.
    pub fn poll_send(&mut self) -> Option<(Member, Vec<u8>)> {
        let Some((to, data)) = self.out.pop_front() else {
            // A newcomer's sync queues a message per record: let go of that room once sent.
            if self.out.capacity() > KEEP_EVENTS {
                self.out = VecDeque::new();
            }
            return None;
        };
        Some((self.outgoing(to, &data), data))
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > KEEP_EVENTS {
            self.events = VecDeque::new();
        }
        event
    }

    /// Every member known (not this peer), with its state.
    pub fn members(&self) -> Vec<(Member, MemberState)> {
        let me = self.foca.identity().peer;
        self.foca
            .iter_membership_state()
            .filter(|m| m.id().peer != me)
            .map(|m| (self.with_signed_addr(m.id().clone()), member_state(m.state())))
            .collect()
    }

    /// The state of one member, without copying the others.
    pub fn state_of(&self, peer: &PeerId) -> Option<(Member, MemberState)> {
        self.foca.iter_membership_state().find(|m| m.id().peer == *peer).map(|m| {
            (self.with_signed_addr(m.id().clone()), member_state(m.state()))
        })
    }

    /// The state of one member, without its address (nothing copied, no record looked up).
    pub fn member_state(&self, peer: &PeerId) -> Option<MemberState> {
        self.foca.iter_membership_state().find(|m| m.id().peer == *peer).map(|m| member_state(m.state()))
    }

    /// Every member known (not this peer) with its state, as [`Membership::members`] gives
    /// them but without their addresses: nothing copied, for callers that only count or look.
    pub fn member_states(&self) -> impl Iterator<Item = (&PeerId, MemberState)> {
        let me = self.foca.identity().peer;
        self.foca.iter_membership_state().filter(move |m| m.id().peer != me).map(|m| (&m.id().peer, member_state(m.state())))
    }

    /// Active members (alive or suspect), not this peer.
    pub fn active(&self) -> usize {
        self.foca.num_members()
    }

    /// The newest advert of every peer seen (this one's included).
    pub fn adverts(&self) -> Vec<Advert> {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.records.values().filter_map(|r| if let Record::Advert(a) = r { Some(a.clone()) } else { None }).collect()
    }

    /// The newest ad of every job seen.
    pub fn job_ads(&self) -> Vec<JobAd> {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.records.values().filter_map(|r| if let Record::JobAd(j) = r { Some(j.clone()) } else { None }).collect()
    }

    /// One record, if known.
    pub fn record(&self, key: &RecordKey) -> Option<Record> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).records.get(key).cloned()
    }
}

/// A digest (tag 3): BLAKE3 of the unfinished job ads held ([`job_digest`]), how many members
/// the sender counts (itself included), and whether it answers another digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Digest {
    jobs: [u8; 32],
    members: u32,
    reply: bool,
}

impl Digest {
    const LEN: usize = 37;

    fn encode(&self) -> [u8; Digest::LEN] {
        let mut b = [0; Digest::LEN];
        b[..32].copy_from_slice(&self.jobs);
        b[32..36].copy_from_slice(&self.members.to_le_bytes());
        b[36] = u8::from(self.reply);
        b
    }

    fn decode(b: &[u8]) -> Option<Digest> {
        let b: &[u8; Digest::LEN] = b.try_into().ok()?;
        let jobs = b[..32].try_into().ok()?;
        let members = u32::from_le_bytes(b[32..36].try_into().ok()?);
        let reply = match b[36] {
            0 => false,
            1 => true,
            _ => return None,
        };
        Some(Digest { jobs, members, reply })
    }
}

/// The ads of jobs not yet done, in key order.
fn unfinished_ads(records: &held::Held) -> impl Iterator<Item = (&RecordKey, &Record)> {
    let mut ads: Vec<(&RecordKey, &Record)> =
        records.iter().filter(|(_, r)| matches!(r, Record::JobAd(j) if !j.done)).collect();
    ads.sort_unstable_by_key(|(k, _)| **k);
    ads.into_iter()
}

/// What two peers compare to find that one lacks news of a job: BLAKE3 over each unfinished
/// job's id and the `seq` of its ad, in key order.
fn job_digest(records: &held::Held) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for (key, r) in unfinished_ads(records) {
        if let RecordKey::JobAd(job) = key {
            h.update(&job.0);
            h.update(&r.seq().to_le_bytes());
        }
    }
    *h.finalize().as_bytes()
}

/// A member's state as foca holds it, as this module names it.
fn member_state(state: State) -> MemberState {
    match state {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down => MemberState::Dead,
    }
}

/// Moves the events of `from` to the end of `to`, and lets `from` go of the room a burst took.
fn move_events(from: &mut VecDeque<MeshEvent>, to: &mut VecDeque<MeshEvent>) {
    to.extend(from.drain(..));
    if from.capacity() > KEEP_EVENTS {
        *from = VecDeque::new();
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(tag);
    v.extend_from_slice(body);
    v
}
