//! A virtual network of memberships for the membership tests: messages delivered in 10 ms
//! steps, with the sender authenticated as a TLS link would.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use spare_protocol::membership::{MeshEvent, Member, MemberState, Membership, MembershipConfig};
use spare_protocol::records::{Advert, JobAd, Record, Signer, Verifier};
use spare_protocol::{BlobId, JobId, PeerId, Policy};

/// A stand-in signature scheme: BLAKE3 of the message, keyed by the signer's id.
pub fn signer(peer: PeerId) -> Signer {
    Arc::new(move |m: &[u8]| blake3::keyed_hash(&peer.0, m).as_bytes().to_vec())
}

pub fn verifier() -> Verifier {
    Arc::new(|p: &PeerId, m: &[u8], s: &[u8]| blake3::keyed_hash(&p.0, m).as_bytes().as_slice() == s)
}

pub struct Net {
    pub peers: Vec<Membership>,
    pub down: Vec<bool>,
    pub now: u64,
    pub events: Vec<Vec<MeshEvent>>,
    /// Bytes delivered so far.
    pub sent: u64,
}

impl Net {
    pub fn new(n: usize) -> Net {
        let peers = (0..n)
            .map(|i| {
                let me = Member { peer: PeerId([i as u8 + 1; 32]), addr: format!("peer{i}").into(), epoch: 1 };
                Membership::new(me, MembershipConfig::lan(n as u32), i as u64, verifier())
            })
            .collect();
        Net { peers, down: vec![false; n], now: 0, events: vec![Vec::new(); n], sent: 0 }
    }

    pub fn index(&self) -> HashMap<String, usize> {
        self.peers.iter().enumerate().map(|(i, p)| (p.me().addr.to_string(), i)).collect()
    }

    /// Delivers every queued message (to peers that are up) and fires timers, in 10 ms steps.
    pub fn run(&mut self, ms: u64) {
        let index = self.index();
        let end = self.now + ms;
        while self.now < end {
            self.now += 10;
            for i in 0..self.peers.len() {
                if !self.down[i] {
                    self.peers[i].tick(self.now);
                }
            }
            loop {
                let mut moved = false;
                for i in 0..self.peers.len() {
                    while let Some((to, bytes)) = self.peers[i].poll_send() {
                        moved = true;
                        let Some(&j) = index.get(to.addr.as_str()) else { continue };
                        if self.down[i] || self.down[j] {
                            continue;
                        }
                        let from = self.peers[i].me().peer;
                        self.sent += bytes.len() as u64;
                        let _ = self.peers[j].handle_data(&bytes, Some(from), self.now);
                    }
                    while let Some(e) = self.peers[i].poll_event() {
                        self.events[i].push(e);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
    }

    /// `n` peers, all but the first joined through it (not yet run).
    pub fn joined(n: usize) -> Net {
        let mut net = Net::new(n);
        let first = net.peers[0].me().addr.clone();
        for i in 1..n {
            let now = net.now;
            net.peers[i].join(&first, now);
        }
        net
    }

    pub fn alive_seen_by(&self, i: usize) -> usize {
        self.peers[i].members().iter().filter(|(_, s)| *s == MemberState::Alive).count()
    }
}

/// The address of the net's peer `peer` (peer `i` is `PeerId([i + 1; 32])` at `peer{i}`).
pub fn addr_of(peer: PeerId) -> String {
    format!("peer{}", peer.0[0].wrapping_sub(1))
}

pub fn advert(peer: PeerId, seq: u64, free: u32) -> Record {
    let mut r = Record::Advert(Advert {
        peer,
        seq,
        addr: addr_of(peer),
        cpus_total: 4,
        cpus_free: free,
        memory_bytes: 1 << 30,
        version: "test".into(),
        reachable: true,
        relays: vec![],
        signature: vec![],
        epoch: 0,
    });
    r.sign(&signer(peer));
    r
}

/// The ad of job `n` (any number), announced by its origin.
pub fn job_ad_numbered(origin: PeerId, n: u32) -> Record {
    let mut digest = [7u8; 32];
    digest[..4].copy_from_slice(&n.to_le_bytes());
    let mut r = job_ad(origin, 0);
    if let Record::JobAd(ad) = &mut r {
        ad.content_digest = digest;
        ad.job = spare_protocol::derive_job_id(&origin, &digest, b"");
    }
    r.sign(&signer(origin));
    r
}

/// The id of job `n` that `origin` derived (content digest `[n; 32]`, no nonce).
pub fn job_id(origin: PeerId, n: u8) -> JobId {
    spare_protocol::derive_job_id(&origin, &[n; 32], b"")
}

pub fn job_ad(origin: PeerId, job: u8) -> Record {
    let mut r = Record::JobAd(JobAd {
        job: job_id(origin, job),
        origin,
        announcer: origin,
        seq: 1,
        module: BlobId([9; 32]),
        task_count: 10,
        policy: Policy::default(),
        coordinators: vec![origin],
        submitted_at_ms: 0,
        done: false,
        content_digest: [job; 32],
        nonce: Vec::new(),
        origin_named: Vec::new(),
        origin_signature: Vec::new(),
        signature: vec![],
        chain: Vec::new(),
    });
    r.sign(&signer(origin));
    r
}

