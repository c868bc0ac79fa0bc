//! The job's tasks and the peers' answers. Tasks are not executed: task `i`'s honest output is
//! BLAKE3 of its index (as many bytes as the run asks, from BLAKE3's XOF), so every honest peer
//! produces the same bytes. A liar answers with its own wrong bytes for every task; colluding
//! liars all answer one shared wrong output per task, so two of them agree with each other.

use crate::{Attestation, BlobId, NetPrefix, Outcome, PeerId, ResultKey, TaskId};

use super::SimConfig;

use super::keys;

/// How a virtual peer answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// The task's real output.
    Honest,
    /// A wrong output of its own for every task.
    Liar,
    /// The wrong output all colluders share for the task.
    Colluder,
}

impl Behaviour {
    /// Whether the peer lies.
    pub fn lies(self) -> bool {
        self != Behaviour::Honest
    }
}

fn xof(context: &[u8], who: &[u8], index: u32, len: u64) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(context);
    h.update(who);
    h.update(&index.to_le_bytes());
    let mut out = vec![0u8; len as usize];
    h.finalize_xof().fill(&mut out);
    out
}

/// The output `peer` reports for task `index`.
pub fn output(behaviour: Behaviour, peer: &PeerId, index: u32, len: u64) -> Vec<u8> {
    match behaviour {
        Behaviour::Honest => xof(b"spare-sim output", &[], index, len),
        Behaviour::Liar => xof(b"spare-sim lie", peer.as_bytes(), index, len),
        Behaviour::Colluder => xof(b"spare-sim collusion", &[], index, len),
    }
}

/// The hash of task `index`'s honest output: what a correct verdict carries.
pub fn honest_hash(index: u32, len: u64) -> BlobId {
    BlobId::of(&output(Behaviour::Honest, &PeerId([0; 32]), index, len))
}

/// Fuel a run of task `index` uses (the same for every peer: fuel is deterministic).
pub fn fuel(index: u32) -> u64 {
    1_000_000 + u64::from(index % 9_973) * 1_013
}

/// `peer`'s signed attestation of `task` and the output bytes that go with it.
pub fn attest(behaviour: Behaviour, peer: PeerId, task: TaskId, len: u64) -> (Attestation, Vec<u8>) {
    let out = output(behaviour, &peer, task.index, len);
    let mut att = Attestation {
        task,
        peer,
        result: ResultKey { outcome: Outcome::Exited(0), output_hash: BlobId::of(&out) },
        fuel_used: fuel(task.index),
        signature: Vec::new(),
    };
    att.signature = keys::tag(&peer, &att.signing_bytes()).to_vec();
    (att, out)
}

/// The network peer `p` asks for leases from: each honest peer its own /24, liars their own or,
/// with `liar_networks`, one of that many.
pub fn network_of(cfg: &SimConfig, p: u32, behaviour: Behaviour) -> Option<NetPrefix> {
    let [_, a, b, c] = match (behaviour, cfg.liar_networks) {
        (Behaviour::Liar | Behaviour::Colluder, Some(n)) => [0, 198, ((p % n) >> 8) as u8, (p % n) as u8],
        _ => (p + (1 << 24)).to_be_bytes(),
    };
    Some(NetPrefix { narrow: [4, a, b, c, 0, 0, 0], wide: [4, a, b, 0, 0, 0, 0] })
}
