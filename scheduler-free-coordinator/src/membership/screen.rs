//! What a SWIM packet may claim, checked before foca sees it. foca believes every packet: its
//! header's `src` and the member updates it carries. Here, with the sender authenticated by the
//! transport:
//! - a packet whose `src` is not its sender, or whose epochs are implausibly far ahead of the
//!   wall clock, is refused (one forged header evicted any peer: findings.md, item 7);
//! - a claim about another member is taken only when it cannot hurt: a member not known yet
//!   (how a joiner learns the mesh) or a later run of one held dead, when the member's own
//!   signed advert names that run (its epoch and address); or a newer incarnation of one held
//!   alive. Otherwise such a run is pinged as claimed, and only its own answer brings it in (a
//!   run made up by a liar, at a wrong address or epoch, never answers). A claim that a
//!   member is suspect or dead, or a refutation on its behalf, or a new identity for a member
//!   held active, is not applied: this peer pings that member itself, and only when no answer
//!   comes within a probe period does it suspect the member on its own account (foca's timer
//!   then ends the suspicion as death unless the member refutes it, directly or through
//!   foca's indirect probes). A refutation comes from the member itself, and always wins.
//! - a member's address, wherever one is used, is the one in its own signed advert of the same
//!   run when one is known; a claim naming another address for that run is dropped.
//!
//! Claims about this peer that only its own key could make (an incarnation above the one it
//! last sent, or its death) are dropped too: a peer's death reaches it as a `TurnUndead` from a
//! peer that holds it dead, never as hearsay. Nobody can check that the sender of a `TurnUndead`
//! really holds this peer dead, so one is taken at most every [`TURN_UNDEAD_EVERY_MS`]: a liar
//! makes this peer rejoin under a new epoch at most that often.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foca::{Codec, Header, Incarnation, Message, PostcardCodec, State};
use serde::Deserialize;

use super::held::Held;
use super::{Member, Membership, MembershipError};
use crate::records::{Advert, Record, RecordKey};
use crate::{Millis, PeerId};

/// How far past the wall clock an epoch may be (an epoch is the Unix time a run started).
pub const EPOCH_SKEW_MS: u64 = 5 * 60_000;
/// Most members being checked at once; a claim about another member past it is dropped.
pub const MAX_CHECKS: usize = 256;
/// Least time between two `TurnUndead`s taken (a rejoin under a new epoch each); the ones
/// between are refused. A real one after a partition comes again at the next packet.
pub const TURN_UNDEAD_EVERY_MS: Millis = 60_000;
/// Most members (any state) known before hearsay of new ones is dropped: made-up members in
/// feeds cannot grow the member list without bound (a peer's own packets still bring it in).
pub const MAX_MEMBERS: usize = 65_536;

type FocaMember = foca::Member<Member>;

/// A [`Member`] read in place from a packet: foca's wire form of it, with the address borrowed.
#[derive(Deserialize)]
struct MemberRef<'a> {
    peer: PeerId,
    addr: &'a str,
    epoch: u64,
}

impl MemberRef<'_> {
    /// Whether it names `m` exactly (same peer, address and run).
    fn is(&self, m: &Member) -> bool {
        self.peer == m.peer && self.epoch == m.epoch && self.addr == m.addr
    }

    fn to_member(&self) -> Member {
        Member { peer: self.peer, addr: self.addr.into(), epoch: self.epoch }
    }
}

/// A `foca::Member<Member>` (one update a packet carries) read in place: the same fields in
/// the same order, so the same bytes.
#[derive(Deserialize)]
struct UpdateRef<'a> {
    #[serde(borrow)]
    id: MemberRef<'a>,
    incarnation: Incarnation,
    state: State,
}

/// A foca packet past the screen.
#[expect(clippy::large_enum_variant, reason = "returned once per packet and taken apart at once; boxing is an allocation")]
pub(super) enum Screened<'a> {
    /// Passed on as it came: it carries no member updates to look at.
    Whole(&'a [u8]),
    /// Decoded: its header, the updates kept, and the custom broadcasts (the records) after
    /// them; foca takes them as they are rather than decoding the packet again.
    Decoded(Header<Member>, Vec<FocaMember>, &'a [u8]),
}

/// The screen's state: what it needs to know about this peer, and the checks in flight.
#[derive(Default)]
pub(super) struct Screen {
    /// This peer's incarnation, as its last packet said.
    incarnation: Incarnation,
    /// The wall clock (Unix ms) as the driver last set it; no epoch check until it does.
    unix_ms: Option<u64>,
    /// Members this peer pinged to check a claim about them: when the answer is due, and
    /// whether silence makes this peer suspect them (a claim of suspicion or death) or changes
    /// nothing (a claimed new identity, pinged as such: only the member itself can confirm it).
    checks: BTreeMap<PeerId, (Millis, bool)>,
    /// The same checks by when their answer is due: the driver asks for the next deadline
    /// after every message, and a scan of the checks for it was a fortieth of the simulator's
    /// time.
    due: BTreeSet<(Millis, PeerId)>,
    /// Number of the next check's ping (answered by an `Ack` foca does not expect, and ignores).
    probe: u8,
    /// When the last `TurnUndead` was taken.
    turned_undead_at: Option<Millis>,
}

/// What is done with one claim about another member.
enum Verdict {
    Keep,
    Drop,
    /// Drop it and ping the member as known here; suspect it if it does not answer.
    Check,
    /// Drop it and ping the member under the identity claimed (a later run of it).
    CheckIdentity,
}

impl Membership {
    /// Sets the wall clock (Unix ms), against which epochs are judged.
    pub fn set_unix_time(&mut self, unix_ms: u64) {
        self.screen.unix_ms = Some(unix_ms);
    }

    /// Members being checked (pinged after a claim about them), for tests and metrics.
    pub fn checks_in_flight(&self) -> usize {
        self.screen.checks.len()
    }

    fn plausible(&self, epoch: u64) -> bool {
        self.screen.unix_ms.is_none_or(|now| epoch <= now.saturating_add(EPOCH_SKEW_MS))
    }

    /// Gives `f` the address in the signed advert of `peer`'s run started at `epoch`, if one is
    /// known: an advert made during that run (adverts are numbered by the Unix time they were
    /// made, a run by the time it started), not one of an earlier run, which may have served
    /// elsewhere. Lent, not copied: most callers only compare it, and a copy for each update of
    /// every packet was a sixth of the simulator's time.
    fn with_signed_addr_of<R>(&self, peer: PeerId, epoch: u64, f: impl FnOnce(Option<&str>) -> R) -> R {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        f(signed_addr(&shared.records, peer, epoch))
    }

    /// `m` with the address of its run's signed advert, when one is known.
    pub(super) fn with_signed_addr(&self, mut m: Member) -> Member {
        self.with_signed_addr_of(m.peer, m.epoch, |addr| {
            if let Some(addr) = addr
                && addr != m.addr
            {
                m.addr = addr.into();
            }
        });
        m
    }

    /// Refuses a hello that names someone other than its sender, or an implausible epoch.
    pub(super) fn screen_hello(&self, joiner: &Member, sender: Option<PeerId>) -> Result<(), MembershipError> {
        if sender.is_some_and(|s| s != joiner.peer) {
            return Err(MembershipError::Refused("a hello must name its sender".into()));
        }
        if !self.plausible(joiner.epoch) {
            return Err(MembershipError::Refused("implausible epoch".into()));
        }
        Ok(())
    }

    /// Screens a foca packet: refused, or passed on (decoded, without the claims dropped).
    pub(super) fn screen_packet<'a>(
        &mut self,
        packet: &'a [u8],
        sender: Option<PeerId>,
        now: Millis,
    ) -> Result<Screened<'a>, MembershipError> {
        let mut rest = packet;
        let header: Header<Member> =
            PostcardCodec.decode_header(&mut rest).map_err(|_| MembershipError::Malformed)?;
        let src = &header.src;
        if sender.is_some_and(|s| s != src.peer) {
            return Err(MembershipError::Refused("the packet's source is not the peer that sent it".into()));
        }
        if !self.plausible(src.epoch) {
            return Err(MembershipError::Refused("implausible epoch".into()));
        }
        if header.message == Message::TurnUndead {
            if self.screen.turned_undead_at.is_some_and(|at| now < at.saturating_add(TURN_UNDEAD_EVERY_MS)) {
                return Err(MembershipError::Refused("a second TurnUndead within a minute".into()));
            }
            self.screen.turned_undead_at = Some(now);
        }
        // It answers: any packet from it ends a check (the link authenticated it).
        self.screen.end_check(&src.peer);
        // No updates to look at (foca itself refuses a malformed remainder).
        if rest.len() < 2 || matches!(header.message, Message::Broadcast | Message::Announce) {
            return Ok(Screened::Whole(packet));
        }
        let count = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        // Each update is read in place (its address borrowed); only a kept one is made a
        // member, which foca takes as it is (decoding the packet again was a fifth of foca's
        // share of the simulator's time). Room for them is taken per packet rather than kept
        // in each of the simulator's 10,300 memberships.
        // The count is the packet's word: room only for as many members as its bytes can hold
        // (each takes at least its 32-byte PeerId), or 101 bytes could ask for 4 MB.
        let mut kept = Vec::with_capacity(usize::from(count).min(rest.len() / 32));
        // The records, locked once for the whole packet rather than once per update.
        let shared = Arc::clone(&self.shared);
        let records = shared.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..count {
            let (update, after): (UpdateRef<'_>, &[u8]) =
                postcard::take_from_bytes(rest).map_err(|_| MembershipError::Malformed)?;
            rest = after;
            match self.judge(&records.records, &update, &src.peer) {
                Verdict::Keep => {
                    kept.push(FocaMember::new(update.id.to_member(), update.incarnation, update.state))
                }
                Verdict::Drop => {}
                Verdict::Check => {
                    let known = self.foca.iter_members().find(|m| m.id().peer == update.id.peer).map(|m| m.id().clone());
                    if let Some(dst) = known {
                        self.check(dst, true, now);
                    }
                }
                // Most claims of a run not yet introduced name one already being checked:
                // the member is only built for a check that goes out.
                Verdict::CheckIdentity if self.may_check(&update.id.peer) => self.check(update.id.to_member(), false, now),
                Verdict::CheckIdentity => {}
            }
        }
        drop(records);
        // Custom broadcasts (the records), checked by their own signatures.
        Ok(Screened::Decoded(header, kept, rest))
    }

    /// What to do with one update a packet from `src` carries.
    fn judge(&self, records: &Held, update: &UpdateRef<'_>, src: &PeerId) -> Verdict {
        let id = &update.id;
        if !self.plausible(id.epoch) {
            return Verdict::Drop;
        }
        let me = self.foca.identity();
        if id.peer == me.peer {
            let hearsay = update.state == State::Down || update.incarnation > self.screen.incarnation;
            return if hearsay { Verdict::Drop } else { Verdict::Keep };
        }
        // The member's own advert, looked up once for both uses below (the map hashes with
        // SipHash, and a second lookup per update was a thirtieth of the simulator's time).
        let advert = match records.get(&RecordKey::Advert(id.peer)) {
            Some(Record::Advert(a)) => Some(a),
            _ => None,
        };
        if advert.and_then(|a| signed_addr_of(a, id.epoch)).is_some_and(|a| a != id.addr) {
            return Verdict::Drop;
        }
        if id.peer == *src {
            return Verdict::Keep;
        }
        let known = self.foca.iter_membership_state().find(|m| m.id().peer == id.peer);
        // A run is introduced on hearsay only when its own advert names it; otherwise it is
        // asked, and its answer (its own packet) brings it in.
        let introduce = || if advert.is_some_and(|a| introduces(a, id)) { Verdict::Keep } else { Verdict::CheckIdentity };
        match (known, update.state) {
            // A member not known yet: learnt, but not as suspect or dead on hearsay.
            (None, State::Alive) if self.foca.iter_membership_state().len() < MAX_MEMBERS => introduce(),
            (None, _) => Verdict::Drop,
            // Held dead here: a later run of it may come back (its own packets would bring it
            // too); anything else about it changes nothing.
            (Some(k), State::Alive) if k.state() == State::Down => {
                if id.epoch > k.id().epoch { introduce() } else { Verdict::Drop }
            }
            (Some(k), _) if k.state() == State::Down => Verdict::Drop,
            // A new identity for a member held active comes only from the member itself: a later
            // run is asked to confirm it, anything else is dropped.
            (Some(k), State::Alive) if !id.is(k.id()) && id.epoch > k.id().epoch => Verdict::CheckIdentity,
            (Some(k), _) if !id.is(k.id()) => Verdict::Drop,
            // News that it is still alive, about a member held alive: harmless.
            (Some(k), State::Alive) if k.state() == State::Alive => Verdict::Keep,
            // A refutation on its behalf (held suspect here), or a claim that it is suspect or
            // dead: ask it.
            (Some(k), _) if update.incarnation > k.incarnation() || update.state != State::Alive => Verdict::Check,
            _ => Verdict::Drop,
        }
    }

    /// Pings `dst` outside SWIM's round, unless its peer is already being checked.
    fn check(&mut self, dst: Member, suspect: bool, now: Millis) {
        let peer = dst.peer;
        if !self.may_check(&peer) {
            return;
        }
        self.screen.probe = self.screen.probe.wrapping_add(1);
        let header = Header {
            src: self.foca.identity().clone(),
            src_incarnation: self.screen.incarnation,
            dst: dst.clone(),
            message: Message::Ping(self.screen.probe),
        };
        let mut data = vec![super::TAG_FOCA];
        if PostcardCodec.encode_header(&header, &mut data).is_err() {
            return;
        }
        let at = now.saturating_add(self.check_ms);
        self.screen.checks.insert(peer, (at, suspect));
        self.screen.due.insert((at, peer));
        self.out.push_back((dst, data));
    }

    /// Whether a check of `peer` may start: none is in flight, and there is room for one.
    fn may_check(&self, peer: &PeerId) -> bool {
        !self.screen.checks.contains_key(peer) && self.screen.checks.len() < MAX_CHECKS
    }

    /// Suspects, on this peer's own account, every member checked that did not answer in time;
    /// it is declared dead unless it refutes within the suspicion time (to this peer directly,
    /// or to foca's probes, direct or indirect).
    pub(super) fn end_checks(&mut self, now: Millis) {
        if self.screen.next_check().is_none_or(|at| at > now) {
            return;
        }
        let due: Vec<(PeerId, bool)> =
            self.screen.checks.iter().filter(|(_, (at, _))| *at <= now).map(|(p, (_, s))| (*p, *s)).collect();
        if due.is_empty() {
            return;
        }
        let mut suspects = Vec::new();
        for (peer, suspect) in due {
            self.screen.end_check(&peer);
            if !suspect {
                continue;
            }
            let alive = self.foca.iter_membership_state().find(|m| m.id().peer == peer && m.state() == State::Alive);
            if let Some(m) = alive {
                suspects.push(FocaMember::new(m.id().clone(), m.incarnation(), State::Suspect));
            }
        }
        if suspects.is_empty() {
            return;
        }
        // foca sets no timer on a suspicion it is handed, so this peer's own ends as death
        // after foca's suspicion time, by `end_stale_suspicions` (dated back to end then).
        let since = now.saturating_sub(self.stale_suspicion_ms.saturating_sub(self.check_suspect_ms));
        for m in &suspects {
            self.suspects.insert(m.id().peer, (m.incarnation(), since));
        }
        let _ = self.with(now, |foca, rt| foca.apply_many(suspects.into_iter(), true, rt));
    }

    /// Notes this peer's incarnation from a packet it sends, and addresses it to the signed
    /// advert's address of its receiver.
    pub(super) fn outgoing(&mut self, to: Member, data: &[u8]) -> Member {
        // Only the header's first two fields, read in place: decoding the whole header (two
        // members, their addresses copied) for every packet sent was 0.7% of the
        // simulator's time. This peer's own packets always decode whole.
        if let Some((&super::TAG_FOCA, packet)) = data.split_first()
            && let Ok(((src, incarnation), _)) = postcard::take_from_bytes::<(MemberRef<'_>, Incarnation)>(packet)
            && src.peer == self.foca.identity().peer
        {
            self.screen.incarnation = incarnation;
        }
        self.with_signed_addr(to)
    }
}

/// The address in `peer`'s signed advert of its run started at `epoch`, among `records` (see
/// `Membership::with_signed_addr_of`).
fn signed_addr(records: &Held, peer: PeerId, epoch: u64) -> Option<&str> {
    match records.get(&RecordKey::Advert(peer)) {
        Some(Record::Advert(a)) => signed_addr_of(a, epoch),
        _ => None,
    }
}

/// The address in advert `a` if it was made during the run started at `epoch` (see
/// [`signed_addr`]).
fn signed_addr_of(a: &Advert, epoch: u64) -> Option<&str> {
    (a.seq >= epoch).then_some(a.addr.as_str())
}

/// Whether `a`, its peer's own signed advert, names the run `id` claims (its epoch and
/// address): what lets hearsay introduce it.
fn introduces(a: &Advert, id: &MemberRef<'_>) -> bool {
    a.epoch == id.epoch && a.addr == id.addr
}

impl Screen {
    /// When the next check is due, if any.
    pub(super) fn next_check(&self) -> Option<Millis> {
        // Most memberships check nobody; the count is at hand, the set's first entry is not.
        if self.checks.is_empty() {
            return None;
        }
        self.due.first().map(|(at, _)| *at)
    }

    /// Forgets the check of `peer`, if any.
    fn end_check(&mut self, peer: &PeerId) {
        if let Some((at, _)) = self.checks.remove(peer) {
            self.due.remove(&(at, *peer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_s_source_and_incarnation_read_in_place_are_foca_s() {
        let src = Member { peer: PeerId([3; 32]), addr: "10.0.0.3:7000".into(), epoch: 1_700_000_000_456 };
        let dst = Member { peer: PeerId([4; 32]), addr: "10.0.0.4:7000".into(), epoch: 9 };
        let header = Header { src: src.clone(), src_incarnation: 300, dst, message: Message::Ping(7) };
        let mut bytes = Vec::new();
        PostcardCodec.encode_header(&header, &mut bytes).expect("encodes");
        let ((read, incarnation), _): ((MemberRef<'_>, Incarnation), &[u8]) =
            postcard::take_from_bytes(&bytes).expect("reads");
        assert!(read.is(&src));
        assert_eq!(incarnation, 300);
    }

    #[test]
    fn an_update_read_in_place_is_foca_s_member_byte_for_byte() {
        let m = Member { peer: PeerId([7; 32]), addr: "10.0.0.1:7000".into(), epoch: 1_700_000_000_123 };
        let update = FocaMember::new(m.clone(), 513, State::Suspect);
        let mut bytes = Vec::new();
        PostcardCodec.encode_member(&update, &mut bytes).expect("encodes");
        bytes.extend_from_slice(b"rest");
        let (read, rest): (UpdateRef<'_>, &[u8]) = postcard::take_from_bytes(&bytes).expect("reads");
        assert_eq!(rest, b"rest");
        assert!(read.id.is(&m));
        assert_eq!(read.id.to_member(), m);
        assert_eq!((read.incarnation, read.state), (513, State::Suspect));
    }
}
