//! The discrete-event queue: events ordered by virtual time, then by the order they were
//! scheduled (a sequence number), so ties break the same way on every run.

use std::collections::{BTreeMap, VecDeque};

use crate::{Millis, TaskId};

use super::net::{CallKind, Packet, RpcMsg};
use super::packets::{Handle, Packets};

/// Something that happens to the simulated mesh at a virtual time. 16 bytes: what is larger or
/// rare is boxed, since the join wave holds about a million of them at once (at 48 bytes, with
/// the ring's buckets grown to hold them, they were 73 MB of the 10,000-peer run's peak).
#[derive(Debug)]
pub enum Event {
    /// A membership timer of `peer`'s view number `view` may be due.
    MeshTick { peer: u32, view: u16 },
    /// A gossip message arrives: its packet is kept with its bucket ([`Queue::take_packet`]).
    Gossip(Handle),
    /// A gossip message further ahead than the ring: its packet moves into its bucket's bytes,
    /// and the event becomes a [`Event::Gossip`], when the ring reaches it.
    FarGossip(Box<Packet>),
    /// An RPC request or reply arrives.
    Rpc(Box<RpcMsg>),
    /// The caller gives up on an RPC (request or reply lost, or the callee is gone).
    RpcFailed { peer: u32, kind: Box<CallKind> },
    /// The peer's mesh loop: advert refresh and bootstrap greetings.
    House { peer: u32 },
    /// The peer's work timer (its slot pass, its report batches) may be due.
    Work { peer: u32 },
    /// A replica of a task finished running in a sandbox slot after so many milliseconds.
    RunDone { peer: u32, run: Box<(TaskId, u32)> },
    /// A coordinator's host timer may be due.
    Host { peer: u32 },
    /// A peer crashes and a fresh one joins.
    Churn,
    /// The origin crashes (`--crash-origin-at`).
    CrashOrigin,
    /// The crashed origin starts again on what it recorded (`--restart-origin-at`).
    RestartOrigin,
    /// Probe-period boundary: has membership converged?
    Check,
}

/// The near future is a ring of one-millisecond buckets, each a FIFO (events pushed for the same
/// millisecond come out in the order they were pushed); events further ahead wait in a map by
/// (time, sequence) and move into their bucket, in order, as the ring reaches them.
/// Popping is then O(1) for the bulk of events (messages, runs, timers a few seconds ahead).
const RING: u64 = 8_192;
/// Most events an emptied bucket keeps room for: the join wave puts a million messages in a few
/// buckets, and every bucket keeping the room its busiest millisecond took held 200 MB at
/// 10,000 peers.
const KEEP_PER_BUCKET: usize = 64;

/// Events waiting to happen, earliest first; ties in the order they were scheduled.
/// The bytes of the near future's gossip packets are kept by bucket ([`Packets`]).
pub struct Queue {
    ring: Vec<VecDeque<Event>>,
    packets: Packets,
    /// The millisecond the ring's cursor is at: every bucket holds events of `cursor..cursor + RING`.
    cursor: Millis,
    near: usize,
    far: BTreeMap<(Millis, u64), Event>,
    seq: u64,
    handled: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            ring: (0..RING).map(|_| VecDeque::new()).collect(),
            packets: Packets::new(RING as usize),
            cursor: 0,
            near: 0,
            far: BTreeMap::new(),
            seq: 0,
            handled: 0,
        }
    }
}

impl Queue {
    /// Schedules `event` at `at` (a time already past is taken as the current one).
    pub fn push(&mut self, at: Millis, event: Event) {
        let at = at.max(self.cursor);
        self.seq += 1;
        if at < self.cursor + RING {
            let event = self.near_event(at, event);
            self.ring[(at % RING) as usize].push_back(event);
            self.near += 1;
        } else {
            self.far.insert((at, self.seq), event);
        }
    }

    /// Schedules the arrival of gossip `data` from `from` to `to` in `cell` at `at`.
    pub fn push_packet(&mut self, at: Millis, from: u32, to: u32, cell: u32, data: &[u8]) {
        let at = at.max(self.cursor);
        if at < self.cursor + RING {
            let offset = self.append(at, from, to, cell, data);
            self.push(at, Event::Gossip(offset));
        } else {
            self.push(at, Event::FarGossip(Box::new(Packet { from, to, cell, data: data.to_vec() })));
        }
    }

    /// `event` as it waits in the ring: a far packet's bytes move into its bucket.
    fn near_event(&mut self, at: Millis, event: Event) -> Event {
        match event {
            Event::FarGossip(p) => Event::Gossip(self.append(at, p.from, p.to, p.cell, &p.data)),
            e => e,
        }
    }

    /// Appends a packet to the bytes of `at`'s bucket, returning where it is there.
    fn append(&mut self, at: Millis, from: u32, to: u32, cell: u32, data: &[u8]) -> Handle {
        self.packets.append((at % RING) as usize, from, to, cell, data)
    }

    /// Copies the packet of the [`Event::Gossip`] just popped into `into` (its bytes replaced),
    /// returning (sender, receiver, cell).
    pub fn take_packet(&self, handle: Handle, into: &mut Vec<u8>) -> (u32, u32, u32) {
        self.packets.read((self.cursor % RING) as usize, handle, into)
    }

    /// The next event, earliest first.
    pub fn pop(&mut self) -> Option<(Millis, Event)> {
        loop {
            if let Some(e) = self.ring[(self.cursor % RING) as usize].pop_front() {
                self.near -= 1;
                self.handled += 1;
                return Some((self.cursor, e));
            }
            let b = (self.cursor % RING) as usize;
            if self.ring[b].capacity() > KEEP_PER_BUCKET {
                self.ring[b] = VecDeque::new();
            }
            // Passed: its packets were all handled.
            self.packets.clear(b);
            if self.near == 0 {
                // Jump straight to the next far event.
                let (&(next, _), _) = self.far.first_key_value()?;
                self.cursor = self.cursor.max(next.saturating_sub(RING - 1));
            } else {
                self.cursor += 1;
            }
            // Events now within the ring move into their buckets, in (time, sequence) order,
            // before anything else can be pushed there.
            while let Some(f) = self.far.first_entry().filter(|f| f.key().0 < self.cursor + RING) {
                let ((at, _), event) = f.remove_entry();
                let event = self.near_event(at, event);
                self.ring[(at % RING) as usize].push_back(event);
                self.near += 1;
            }
        }
    }

    /// Schedules `event` at `at` (a time already past is taken as the current one) if that is
    /// sooner than the time in `slot`, a timer field that holds when its event is next scheduled
    /// ([`NEVER`](super::peer::NEVER) if it is not): the handler ignores an event whose time is
    /// no longer the slot's, so each timer fires once.
    pub fn arm(&mut self, slot: &mut Millis, at: Millis, event: Event) {
        let at = at.max(self.cursor);
        if at < *slot {
            *slot = at;
            self.push(at, event);
        }
    }

    /// Events handled so far.
    pub fn handled(&self) -> u64 {
        self.handled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_takes_16_bytes() {
        assert_eq!(std::mem::size_of::<Event>(), 16);
    }

    #[test]
    fn packets_near_and_far_arrive_in_order_with_their_bytes() {
        let mut q = Queue::default();
        q.push_packet(RING + 50, 1, 2, 3, b"far");
        q.push_packet(5, 4, 5, 6, b"near");
        q.push(5, Event::Check);
        q.push_packet(5, 7, 8, 9, b"");
        let mut into = Vec::new();
        let mut seen = Vec::new();
        while let Some((at, e)) = q.pop() {
            match e {
                Event::Gossip(h) => {
                    let who = q.take_packet(h, &mut into);
                    seen.push((at, Some(who), into.clone()));
                }
                Event::Check => seen.push((at, None, Vec::new())),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            seen,
            vec![
                (5, Some((4, 5, 6)), b"near".to_vec()),
                (5, None, Vec::new()),
                (5, Some((7, 8, 9)), Vec::new()),
                (RING + 50, Some((1, 2, 3)), b"far".to_vec()),
            ]
        );
    }
}
