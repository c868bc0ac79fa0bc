//! Reachability: whether other peers can dial this one, learned by dial-back (as libp2p's
//! AutoNAT does), and what follows from it: how gossip reaches a peer nobody can dial (through
//! its relays), and who may coordinate jobs (and so serve their blobs).
//!
//! Sans-IO: [`Reachability::start`] says how many peers to ask to dial this one back; each
//! answer goes to [`Reachability::handle_answer`], which gives the verdict with the last one.
//! The rule: **reachable** when at least one asked peer completed a TLS handshake with this peer
//! at its address; **unreachable** when none did and at least one tried and failed; when no asked
//! peer answered at all (they were gone, busy or too old), the verdict stays as it was and the
//! question is asked again after [`RETRY_MS`]. A verdict is checked again every [`RECHECK_MS`]
//! and whenever the advertised address changes. Until a first verdict (`Unknown`) a peer counts
//! as reachable: a lone public peer has nobody to ask, and must still coordinate the jobs
//! submitted to it; a peer behind NAT learns otherwise within seconds of meeting one other.

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
    /// Some peer dialed this one back.
    Reachable,
    /// Peers tried, and none could.
    Unreachable,
}

/// One asked peer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// It dialed this peer back and met its PeerId.
    Reached,
    /// It tried and could not.
    NotReached,
    /// It did not answer (gone, busy, refused the request).
    NoAnswer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Round {
    waiting: usize,
    reached: usize,
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
}

impl Default for Reachability {
    fn default() -> Self {
        Self::new()
    }
}

impl Reachability {
    /// Nothing known yet.
    pub fn new() -> Reachability {
        Reachability { verdict: Verdict::Unknown, addr: None, round: None, next: 0 }
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// What this peer's advert says: reachable unless found unreachable.
    pub fn advertised(&self) -> bool {
        self.verdict != Verdict::Unreachable
    }

    /// Whether a round about `addr` is due: none is running, and none was yet, the address
    /// changed, or its time came.
    pub fn due(&self, addr: &str, now: Millis) -> bool {
        self.round.is_none() && (self.addr.as_deref() != Some(addr) || now >= self.next)
    }

    /// Starts a round about `addr` when one is due, given `available` peers to ask; returns how
    /// many of them to ask (0: none now).
    pub fn start(&mut self, addr: &str, available: usize, now: Millis) -> usize {
        if !self.due(addr, now) || available == 0 {
            return 0;
        }
        let moved = self.addr.as_deref() != Some(addr);
        if moved {
            // A verdict about another address says nothing about this one.
            self.verdict = Verdict::Unknown;
            self.addr = Some(addr.to_string());
        }
        let asked = available.min(DIAL_BACK_ASKED);
        self.round = Some(Round { waiting: asked, reached: 0, not_reached: 0 });
        asked
    }

    /// One asked peer answered; the last answer of a round gives its verdict (`Some`, changed or
    /// not). Answers with no round running are ignored.
    pub fn handle_answer(&mut self, answer: Answer, now: Millis) -> Option<Verdict> {
        let round = self.round.as_mut()?;
        match answer {
            Answer::Reached => round.reached += 1,
            Answer::NotReached => round.not_reached += 1,
            Answer::NoAnswer => {}
        }
        round.waiting = round.waiting.saturating_sub(1);
        if round.waiting > 0 {
            return None;
        }
        let (reached, not_reached) = (round.reached, round.not_reached);
        self.round = None;
        if reached > 0 {
            self.verdict = Verdict::Reachable;
        } else if not_reached > 0 {
            self.verdict = Verdict::Unreachable;
        } else {
            self.next = now + RETRY_MS;
            return Some(self.verdict);
        }
        self.next = now + RECHECK_MS;
        Some(self.verdict)
    }
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

    #[test]
    fn one_dial_back_makes_a_peer_reachable_and_only_failures_unreachable() {
        let mut r = Reachability::new();
        assert_eq!(r.verdict(), Verdict::Unknown);
        assert!(r.advertised(), "unknown counts as reachable, so a lone public peer coordinates");
        assert_eq!(r.start("a:1", 0, 0), 0, "nobody to ask");
        assert!(r.due("a:1", 0));
        assert_eq!(r.start("a:1", 5, 0), DIAL_BACK_ASKED, "at most three asked");
        assert_eq!(r.start("a:1", 5, 1), 0, "one round at a time");
        assert!(!r.due("a:1", 1) && !r.due("b:2", 1));
        assert_eq!(r.handle_answer(Answer::NotReached, 10), None);
        assert_eq!(r.handle_answer(Answer::NoAnswer, 10), None);
        assert_eq!(r.handle_answer(Answer::Reached, 10), Some(Verdict::Reachable), "one success is enough");
        assert!(r.advertised());
        // Checked again only after RECHECK_MS at the same address…
        assert_eq!(r.start("a:1", 5, 10 + RECHECK_MS - 1), 0);
        assert_eq!(r.start("a:1", 1, 10 + RECHECK_MS), 1);
        assert_eq!(r.handle_answer(Answer::NotReached, 20 + RECHECK_MS), Some(Verdict::Unreachable));
        assert!(!r.advertised());
        // …or at once when the address changes, which forgets the verdict.
        assert_eq!(r.start("b:2", 2, 30 + RECHECK_MS), 2);
        assert_eq!(r.verdict(), Verdict::Unknown);
    }

    #[test]
    fn a_round_nobody_answers_keeps_the_verdict_and_is_retried_soon() {
        let mut r = Reachability::new();
        assert_eq!(r.start("a:1", 1, 0), 1);
        assert_eq!(r.handle_answer(Answer::NotReached, 0), Some(Verdict::Unreachable));
        assert_eq!(r.start("a:1", 2, RECHECK_MS), 2);
        assert_eq!(r.handle_answer(Answer::NoAnswer, RECHECK_MS), None);
        assert_eq!(r.handle_answer(Answer::NoAnswer, RECHECK_MS), Some(Verdict::Unreachable), "unchanged");
        assert_eq!(r.start("a:1", 2, RECHECK_MS + RETRY_MS - 1), 0);
        assert_eq!(r.start("a:1", 2, RECHECK_MS + RETRY_MS), 2, "asked again after RETRY_MS");
        assert_eq!(r.handle_answer(Answer::Reached, 0), None, "one of two");
        assert_eq!(r.handle_answer(Answer::Reached, 0), Some(Verdict::Reachable));
        assert_eq!(r.handle_answer(Answer::Reached, 0), None, "no round running");
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
