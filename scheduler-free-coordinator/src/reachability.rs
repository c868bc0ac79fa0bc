//! Reachability: whether other peers can dial this one, learned by dial-back (as libp2p's
//! AutoNAT does), and what follows from it: how gossip reaches a peer nobody can dial (through
//! its relays), and who may coordinate jobs (and so serve their blobs).
//!
//! Sans-IO: [`Reachability::start`] says how many peers to ask to dial this one back; each
//! answer goes to [`Reachability::handle_answer`], which gives the verdict with the last one.
//! The rule, so that one lying peer cannot set it: **reachable** when at least two asked peers
//! completed a TLS handshake with this peer and at least one of them dialed its *advertised*
//! address (the others may have dialed the address its question came from), and successes
//! outnumber failures; **unreachable** when the answers that failed, or reached it only at
//! another address than the advertised one (a port forwarded to a private address it
//! advertises, or a multi-homed peer asking from another IP: others cannot dial what it
//! advertises), outnumber those that reached it there. Any other round leaves the verdict as it
//! was and is asked again after [`RETRY_MS`]: one that nobody answered (they were gone, busy or
//! too old), a split (one liar, or one dial-back that timed out under load, sets nothing), and
//! one whose only answer is a success (a two-peer mesh has one peer to ask; asked again as soon
//! as more peers can be asked). Verdicts are checked again every [`RECHECK_MS`], and whenever
//! the advertised address changes.
//! Until a first verdict (`Unknown`) a peer counts as reachable: a lone public peer has nobody
//! to ask, and must still coordinate the jobs submitted to it; a peer behind NAT learns
//! otherwise within seconds of meeting one other. A coordinator whose advert turns unreachable
//! leaves its jobs' lists ([`coordinators_in_role`]).

use crate::records::Advert;
use crate::{Millis, PeerId};

/// Peers asked to dial back in one round.
pub const DIAL_BACK_ASKED: usize = 3;
/// A verdict is checked again this often (a router's port may have been opened, or closed).
pub const RECHECK_MS: Millis = 600_000;
/// A round nobody answered is tried again this much later.
pub const RETRY_MS: Millis = 30_000;
/// Most relays an unreachable peer keeps and names in its advert (more named are ignored).
pub const MAX_RELAYS: usize = 3;
/// How long a peer that asked for dial-backs waits for their answers.
pub const ASK_TIMEOUT_MS: Millis = 8_000;
/// A peer dials back one asker at most this often (and so never twice at once: one takes less).
pub const DIAL_BACK_EVERY_MS: Millis = 10_000;
/// How long a dial-back (connect and TLS handshake) may take.
pub const DIAL_BACK_TIMEOUT_MS: Millis = 5_000;

/// What this peer knows of its own reachability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No round has ended with an answer yet.
    Unknown,
    /// Two peers dialed this one back, one of them at its advertised address.
    Reachable,
    /// Peers tried, and none could.
    Unreachable,
}

/// One asked peer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It dialed this peer back at its advertised address and met its PeerId.
    Reached,
    /// It dialed this peer back at an address other than the advertised one (the IP the
    /// question came from) and met its PeerId: others cannot be sure to dial what it advertises.
    ReachedElsewhere,
    /// It tried and could not.
    NotReached,
    /// It did not answer (gone, busy, refused the request).
    NoAnswer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Round {
    asked: usize,
    at: Millis,
    waiting: usize,
    reached: usize,
    elsewhere: usize,
    not_reached: usize,
}

/// The dial-back state of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reachability {
    verdict: Verdict,
    /// The address the verdict (or the round) is about.
    addr: Option<String>,
    round: Option<Round>,
    /// When the next round is due (at the same address).
    next: Millis,
    /// How many were asked in the last round, and when, if one success was all it got: a round
    /// is due again as soon as more peers can be asked (and those asked would answer again).
    lone: Option<(usize, Millis)>,
}

impl Default for Reachability {
    fn default() -> Self {
        Self::new()
    }
}

impl Reachability {
    /// Nothing known yet.
    pub fn new() -> Reachability {
        Reachability { verdict: Verdict::Unknown, addr: None, round: None, next: 0, lone: None }
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Whether the last round got one success alone, so more peers to ask make a round due
    /// (the driver need count them only then).
    pub fn confirming(&self) -> bool {
        self.lone.is_some()
    }

    /// What this peer's advert says: reachable unless found unreachable.
    pub fn advertised(&self) -> bool {
        self.verdict != Verdict::Unreachable
    }

    /// Whether a round about `addr` is due, with `available` peers to ask: none is running, and
    /// none was yet, the address changed, its time came, or the last one got one success alone
    /// and more peers can be asked now (once those asked would answer again:
    /// [`DIAL_BACK_EVERY_MS`]).
    pub fn due(&self, addr: &str, available: usize, now: Millis) -> bool {
        let more = self.lone.is_some_and(|(n, at)| available > n && now >= at + DIAL_BACK_EVERY_MS);
        self.round.is_none() && (self.addr.as_deref() != Some(addr) || now >= self.next || more)
    }

    /// Starts a round about `addr` when one is due, given `available` peers to ask; returns how
    /// many of them to ask (0: none now).
    pub fn start(&mut self, addr: &str, available: usize, now: Millis) -> usize {
        if !self.due(addr, available, now) || available == 0 {
            return 0;
        }
        self.lone = None;
        let moved = self.addr.as_deref() != Some(addr);
        if moved {
            // A verdict about another address says nothing about this one.
            self.verdict = Verdict::Unknown;
            self.addr = Some(addr.to_string());
        }
        let asked = available.min(DIAL_BACK_ASKED);
        self.round = Some(Round { asked, at: now, waiting: asked, reached: 0, elsewhere: 0, not_reached: 0 });
        asked
    }

    /// One asked peer answered; the last answer of a round gives its verdict (`Some`, changed or
    /// not). Answers with no round running are ignored.
    pub fn handle_answer(&mut self, answer: Answer, now: Millis) -> Option<Verdict> {
        let round = self.round.as_mut()?;
        match answer {
            Answer::Reached => round.reached += 1,
            Answer::ReachedElsewhere => round.elsewhere += 1,
            Answer::NotReached => round.not_reached += 1,
            Answer::NoAnswer => {}
        }
        round.waiting = round.waiting.saturating_sub(1);
        if round.waiting > 0 {
            return None;
        }
        let Round { asked, at, reached, elsewhere, not_reached, .. } = *round;
        self.round = None;
        // Not dialed at the advertised address counts against it; either side needs a majority
        // of the answers, so one liar, or one dial-back that timed out under load, sets nothing.
        let against = not_reached + elsewhere;
        if reached >= 1 && reached + elsewhere >= 2 && reached + elsewhere > not_reached {
            self.verdict = Verdict::Reachable;
            self.next = now + RECHECK_MS;
        } else if against > reached {
            self.verdict = Verdict::Unreachable;
            self.next = now + RECHECK_MS;
        } else {
            // Nobody answered, one success alone, or a split: not enough to say either; asked
            // again soon.
            self.next = now + RETRY_MS;
            if reached > 0 && against == 0 {
                self.lone = Some((asked, at));
            }
        }
        Some(self.verdict)
    }
}

/// A job's coordinators as the role rules should see them (`list`, the active one first): those
/// that may not coordinate (`may`: their adverts say unreachable, this peer's own verdict for
/// itself) left out, as long as one that may and is `live` remains; otherwise the list as it is
/// (its job waits for a reachable coordinator rather than for none). So a coordinator chosen
/// before it found itself unreachable stands by, the next one takes the job over, and the
/// active one drops it from the list at its next top-up. `None`: nothing to leave out.
pub fn coordinators_in_role(
    list: &[PeerId],
    may: impl Fn(&PeerId) -> bool,
    live: impl Fn(&PeerId) -> bool,
) -> Option<Vec<PeerId>> {
    if list.iter().all(&may) || !list.iter().any(|p| may(p) && live(p)) {
        return None;
    }
    Some(list.iter().copied().filter(|p| may(p)).collect())
}

/// Where a dial-back asked from IP `from` for the address `addr` (the asker's advertised
/// `IP:port`) goes: `addr` itself when its IP is `from`, or when both are loopback (one machine,
/// where a peer may listen on 127.0.0.2 and connect from 127.0.0.1); otherwise `from` at `addr`'s
/// port. Never a third party's address, so a dial-back cannot be turned against anyone but the
/// asker. `None`: `addr` is not `host:port` with a port.
pub fn dial_back_target(addr: &str, from: std::net::IpAddr) -> Option<std::net::SocketAddr> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let from = from.to_canonical();
    let named = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().ok().map(|ip| ip.to_canonical());
    let ip = match named {
        Some(ip) if ip == from || (ip.is_loopback() && from.is_loopback()) => ip,
        _ => from,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

/// Whether a peer may be chosen to coordinate a job (and so serve its module and inputs): not
/// when its advert says it is unreachable. A peer with no advert heard yet may.
pub fn may_coordinate(advert: Option<&Advert>) -> bool {
    advert.is_none_or(|a| a.reachable)
}

/// How a gossip packet reaches a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Dial it.
    Direct,
    /// It is attached to this peer: down its stream.
    Attached,
    /// Through this relay of its.
    Via(PeerId),
    /// No way now (unreachable, and none of its relays is alive): dropped, as SWIM tolerates.
    Drop,
}

/// How to send to `to`: down its stream when it is attached here; directly unless its advert
/// says it is unreachable; otherwise through the first of its advert's relays (at most
/// [`MAX_RELAYS`]) that is alive and not this peer.
pub fn route(me: &PeerId, advert: Option<&Advert>, attached_here: bool, alive: impl Fn(&PeerId) -> bool) -> Route {
    if attached_here {
        return Route::Attached;
    }
    let Some(a) = advert.filter(|a| !a.reachable) else { return Route::Direct };
    a.relays.iter().take(MAX_RELAYS).find(|r| *r != me && alive(r)).map_or(Route::Drop, |r| Route::Via(*r))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round of `answers` (as many asked) from the verdict `r` holds, at `now`.
    fn round(r: &mut Reachability, addr: &str, answers: &[Answer], now: Millis) -> Option<Verdict> {
        assert_eq!(r.start(addr, answers.len(), now), answers.len().min(DIAL_BACK_ASKED));
        answers.iter().map(|a| r.handle_answer(*a, now)).last().flatten()
    }

    #[test]
    fn two_dial_backs_one_at_the_advertised_address_make_a_peer_reachable() {
        use Answer::*;
        let mut r = Reachability::new();
        assert_eq!(r.verdict(), Verdict::Unknown);
        assert!(r.advertised(), "unknown counts as reachable, so a lone public peer coordinates");
        assert_eq!(r.start("a:1", 0, 0), 0, "nobody to ask");
        assert!(r.due("a:1", 0, 0));
        assert_eq!(r.start("a:1", 5, 0), DIAL_BACK_ASKED, "at most three asked");
        assert_eq!(r.start("a:1", 5, 1), 0, "one round at a time");
        assert!(!r.due("a:1", 5, 1) && !r.due("b:2", 5, 1));
        assert_eq!(r.handle_answer(NotReached, 10), None);
        assert_eq!(r.handle_answer(ReachedElsewhere, 10), None);
        assert_eq!(r.handle_answer(Reached, 10), Some(Verdict::Reachable), "two agree, one at the advertised address");
        assert!(r.advertised());
        // Checked again only after RECHECK_MS at the same address…
        assert_eq!(r.start("a:1", 5, 10 + RECHECK_MS - 1), 0);
        assert_eq!(round(&mut r, "a:1", &[NotReached], 10 + RECHECK_MS), Some(Verdict::Unreachable));
        assert!(!r.advertised());
        // …or at once when the address changes, which forgets the verdict.
        assert_eq!(r.start("b:2", 2, 30 + RECHECK_MS), 2);
        assert_eq!(r.verdict(), Verdict::Unknown);
    }

    #[test]
    fn one_liar_cannot_make_a_peer_reachable() {
        use Answer::*;
        // Behind NAT, one asked peer lies: the two honest ones win.
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[Reached, NotReached, NotReached], 0), Some(Verdict::Unreachable));
        // The liar alone, or with only peers that did not answer, sets nothing.
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[Reached, NoAnswer, NoAnswer], 0), Some(Verdict::Unknown));
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[NotReached], 0), Some(Verdict::Unreachable));
        assert_eq!(round(&mut r, "a:1", &[Reached, NoAnswer], RECHECK_MS), Some(Verdict::Unreachable), "unchanged");
        // Two successes both at another address than the advertised one: nobody dialed what
        // it advertises (a port forwarded while a private address is advertised).
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[ReachedElsewhere, ReachedElsewhere, ReachedElsewhere], 0), Some(Verdict::Unreachable));
        assert!(!r.advertised());
        // A lone honest success in a two-peer mesh leaves the peer counting as reachable…
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[Reached], 0), Some(Verdict::Unknown));
        assert!(r.advertised());
        assert_eq!(r.start("a:1", 1, RETRY_MS - 1), 0);
        assert_eq!(round(&mut r, "a:1", &[Reached], RETRY_MS), Some(Verdict::Unknown));
        assert!(r.confirming());
        // …and is confirmed as soon as a second peer can be asked (and the first would answer).
        let t = RETRY_MS + DIAL_BACK_EVERY_MS;
        assert!(!r.due("a:1", 1, t) && !r.due("a:1", 2, t - 1) && r.due("a:1", 2, t));
        assert_eq!(round(&mut r, "a:1", &[Reached, Reached], t), Some(Verdict::Reachable), "confirmed once two answer");
        assert!(!r.due("a:1", 3, t + 1) && !r.confirming(), "confirmed: no hurry");
    }

    #[test]
    fn a_split_round_sets_nothing_and_is_asked_again_soon() {
        use Answer::*;
        // A public peer in a three-peer mesh whose one dial-back timed out under load (or was a
        // liar's): it still counts as reachable, and is asked again soon.
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[Reached, NotReached], 0), Some(Verdict::Unknown));
        assert!(r.advertised() && !r.confirming());
        assert_eq!(r.start("a:1", 2, RETRY_MS - 1), 0);
        assert_eq!(round(&mut r, "a:1", &[Reached, Reached], RETRY_MS), Some(Verdict::Reachable), "the slow one answered");
        // Once reachable, a split keeps it so.
        assert_eq!(round(&mut r, "a:1", &[NotReached, Reached], RETRY_MS + RECHECK_MS), Some(Verdict::Reachable));
        // A liar's success against two honest failures does not help a peer behind NAT.
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[NotReached, NotReached], 0), Some(Verdict::Unreachable));
        assert_eq!(r.start("a:1", 2, RECHECK_MS - 1), 0, "uncontested: after RECHECK_MS");
        assert_eq!(round(&mut r, "a:1", &[Reached, NotReached, NotReached], RECHECK_MS), Some(Verdict::Unreachable));
    }

    #[test]
    fn a_round_nobody_answers_keeps_the_verdict_and_is_retried_soon() {
        use Answer::*;
        let mut r = Reachability::new();
        assert_eq!(round(&mut r, "a:1", &[NotReached], 0), Some(Verdict::Unreachable));
        assert_eq!(r.start("a:1", 2, RECHECK_MS), 2);
        assert_eq!(r.handle_answer(NoAnswer, RECHECK_MS), None);
        assert_eq!(r.handle_answer(NoAnswer, RECHECK_MS), Some(Verdict::Unreachable), "unchanged");
        assert_eq!(r.start("a:1", 2, RECHECK_MS + RETRY_MS - 1), 0);
        assert_eq!(r.start("a:1", 2, RECHECK_MS + RETRY_MS), 2, "asked again after RETRY_MS");
        assert_eq!(r.handle_answer(Reached, 0), None, "one of two");
        assert_eq!(r.handle_answer(Reached, 0), Some(Verdict::Reachable));
        assert_eq!(r.handle_answer(Reached, 0), None, "no round running");
    }

    #[test]
    fn a_coordinator_found_unreachable_leaves_the_roles_while_a_reachable_one_is_live() {
        let (a, b, c) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        let list = [a, b, c];
        let all = |_: &PeerId| true;
        assert_eq!(coordinators_in_role(&list, all, all), None, "all may coordinate");
        assert_eq!(coordinators_in_role(&list, |p| *p != b, all), Some(vec![a, c]), "a backup dropped");
        assert_eq!(coordinators_in_role(&list, |p| *p != a, all), Some(vec![b, c]), "the leader dropped: b leads");
        assert_eq!(coordinators_in_role(&list, |p| *p == c, |p| *p != c), None, "no live reachable one: kept");
        assert_eq!(coordinators_in_role(&list, |p| *p == c, all), Some(vec![c]));
        assert_eq!(coordinators_in_role(&[a], |_| false, all), None, "a lone coordinator stays");
    }

    #[test]
    fn a_dial_back_goes_only_to_the_asker() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let at = |s: &str| Some(s.parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(dial_back_target("203.0.113.5:7070", ip("203.0.113.5")), at("203.0.113.5:7070"));
        // Behind NAT: the advertised private address is not dialed, the address seen is.
        assert_eq!(dial_back_target("192.168.1.2:7070", ip("203.0.113.9")), at("203.0.113.9:7070"));
        // A third party's address is never dialed.
        assert_eq!(dial_back_target("198.51.100.1:443", ip("203.0.113.9")), at("203.0.113.9:443"));
        assert_eq!(dial_back_target("victim.example.org:80", ip("203.0.113.9")), at("203.0.113.9:80"));
        // One machine: any loopback address (but from loopback only).
        assert_eq!(dial_back_target("127.0.0.2:9000", ip("127.0.0.1")), at("127.0.0.2:9000"));
        assert_eq!(dial_back_target("127.0.0.2:9000", ip("::ffff:127.0.0.1")), at("127.0.0.2:9000"));
        assert_eq!(dial_back_target("127.0.0.2:9000", ip("203.0.113.9")), at("203.0.113.9:9000"));
        assert_eq!(dial_back_target("[::1]:9000", ip("::1")), at("[::1]:9000"));
        assert_eq!(dial_back_target("no-port", ip("::1")), None);
        assert_eq!(dial_back_target("1.2.3.4:0", ip("1.2.3.4")), None);
    }

    fn advert(reachable: bool, relays: Vec<PeerId>) -> Advert {
        Advert {
            peer: PeerId([9; 32]),
            seq: 1,
            addr: "n:1".into(),
            cpus_total: 1,
            cpus_free: 1,
            memory_bytes: 1,
            version: "0".into(),
            reachable,
            relays,
            signature: Vec::new(),
            epoch: 0,
        }
    }

    #[test]
    fn gossip_for_an_unreachable_peer_goes_down_its_stream_or_through_a_live_relay() {
        let (me, r1, r2) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        let all = |_: &PeerId| true;
        assert_eq!(route(&me, None, false, all), Route::Direct, "no advert yet: dial it");
        assert_eq!(route(&me, Some(&advert(true, vec![])), false, all), Route::Direct);
        let nat = advert(false, vec![me, r1, r2]);
        assert_eq!(route(&me, Some(&nat), true, all), Route::Attached);
        assert_eq!(route(&me, Some(&nat), false, all), Route::Via(r1), "never through itself");
        assert_eq!(route(&me, Some(&nat), false, |p| *p == r2), Route::Via(r2), "a live relay");
        assert_eq!(route(&me, Some(&nat), false, |_| false), Route::Drop);
        let many = advert(false, vec![PeerId([4; 32]), PeerId([5; 32]), PeerId([6; 32]), r1]);
        assert_eq!(route(&me, Some(&many), false, |p| *p == r1), Route::Drop, "past MAX_RELAYS is ignored");
        assert!(may_coordinate(None) && may_coordinate(Some(&advert(true, vec![]))));
        assert!(!may_coordinate(Some(&nat)), "an unreachable peer never coordinates");
    }
}
