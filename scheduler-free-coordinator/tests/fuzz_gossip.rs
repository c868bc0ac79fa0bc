//! Fuzzing the decoders of gossip bytes, which come from any peer: `Membership::handle_data`
//! (all four frames: foca packets, record lists, hellos, digests) and `Record::decode` (postcard
//! records). Property-based (proptest) with a bounded number of cases, so it runs in seconds in
//! every `cargo test`: arbitrary bytes, and real frames of a small mesh mutated (bytes flipped,
//! inserted, cut). No input may panic, and none may make a decoder allocate much more than its
//! own size (a counting allocator measures each call's peak, per thread).

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use spare_protocol::PeerId;
use spare_protocol::membership::{Member, Membership, MembershipConfig};
use spare_protocol::records::{Advert, Record, Signer, Verifier};

mod counting;

use counting::{cases, peak_of};

/// What one decode of `len` bytes may allocate at most: a small multiple of its size (decoded
/// records are kept, SWIM state grows by a member) plus a fixed allowance.
fn allowance(len: usize) -> usize {
    64 * len + (256 << 10)
}

// ---- a small mesh's real frames -----------------------------------------------------------

fn signer(peer: PeerId) -> Signer {
    Arc::new(move |m: &[u8]| blake3::keyed_hash(&peer.0, m).as_bytes().to_vec())
}

fn verifier() -> Verifier {
    Arc::new(|p: &PeerId, m: &[u8], s: &[u8]| blake3::keyed_hash(&p.0, m).as_bytes().as_slice() == s)
}

fn member(i: u8) -> Member {
    Member { peer: PeerId([i; 32]), addr: format!("10.0.0.{i}:7070").into(), epoch: 1 }
}

fn membership(i: u8) -> Membership {
    Membership::new(member(i), MembershipConfig::lan(8), u64::from(i), verifier())
}

fn advert(i: u8) -> Record {
    let mut r = Record::Advert(Advert {
        peer: PeerId([i; 32]),
        seq: 1,
        addr: format!("10.0.0.{i}:7070"),
        cpus_total: 4,
        cpus_free: 4,
        memory_bytes: 1 << 30,
        version: "0.1.0".into(),
        reachable: true,
        relays: Vec::new(),
        signature: Vec::new(),
        epoch: 0,
    });
    r.sign(&signer(PeerId([i; 32])));
    r
}

/// Frames three peers exchange while joining, gossiping adverts and ticking: every kind of
/// frame a peer sends (hello, foca packets, record lists, digests).
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut peers: Vec<Membership> = (1..=3).map(membership).collect();
        let mut frames = Vec::new();
        for (i, p) in peers.iter_mut().enumerate() {
            p.publish(advert(i as u8 + 1), 0);
        }
        peers[1].join("10.0.0.1:7070", 0);
        peers[2].join("10.0.0.1:7070", 0);
        for now in (0..40_000).step_by(250) {
            let mut out = Vec::new();
            for (i, p) in peers.iter_mut().enumerate() {
                p.tick(now);
                while let Some((to, bytes)) = p.poll_send() {
                    out.push((PeerId([i as u8 + 1; 32]), to, bytes));
                }
            }
            for (from, to, bytes) in out {
                if let Some(p) = peers.iter_mut().find(|p| p.me().peer == to.peer || p.me().addr == to.addr) {
                    let _ = p.handle_data(&bytes, Some(from), now);
                }
                frames.push(bytes);
            }
        }
        frames.sort();
        frames.dedup();
        assert!(frames.len() > 10, "the mesh talked: {} frames", frames.len());
        for tag in 0u8..=3 {
            assert!(frames.iter().any(|f| f.first() == Some(&tag)), "frame tag {tag} seen");
        }
        frames
    })
}

/// A mutation of a frame: bytes replaced, one inserted, the end cut.
#[derive(Clone, Debug)]
struct Mutation {
    pick: usize,
    flips: Vec<(usize, u8)>,
    insert: Option<(usize, u8)>,
    cut: Option<usize>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        any::<usize>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        proptest::option::of((any::<usize>(), any::<u8>())),
        proptest::option::of(any::<usize>()),
    )
        .prop_map(|(pick, flips, insert, cut)| Mutation { pick, flips, insert, cut })
}

fn apply(m: &Mutation) -> Vec<u8> {
    let frames = corpus();
    let mut f = frames[m.pick % frames.len()].clone();
    for (at, b) in &m.flips {
        if !f.is_empty() {
            let n = f.len();
            f[at % n] = *b;
        }
    }
    if let Some((at, b)) = m.insert {
        f.insert(at % (f.len() + 1), b);
    }
    if let Some(cut) = m.cut {
        f.truncate(cut % (f.len() + 1));
    }
    f
}

/// Feeds `bytes` to a fresh peer as if from a known member, checking it neither panics nor
/// allocates past [`allowance`].
fn feed(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut m = membership(9);
    let peak = peak_of(|| {
        let _ = m.handle_data(bytes, Some(PeerId([1; 32])), 1_000);
        m.tick(2_000);
        while m.poll_send().is_some() {}
    });
    prop_assert!(peak <= allowance(bytes.len()), "{} bytes in, {peak} bytes allocated", bytes.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2000), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_without_harm(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        feed(&bytes)?;
    }

    #[test]
    fn each_frame_tag_with_arbitrary_bodies(tag in 0u8..5, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        feed(&[&[tag][..], &body].concat())?;
    }

    #[test]
    fn mutated_real_frames(m in mutation()) {
        feed(&apply(&m))?;
    }

    #[test]
    fn records_decode_arbitrary_and_mutated_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), flip in any::<(usize, u8)>()) {
        let peak = peak_of(|| { let _ = Record::decode(&bytes); });
        prop_assert!(peak <= allowance(bytes.len()));
        let mut real = advert(3).encode();
        let n = real.len();
        real[flip.0 % n] = flip.1;
        if let Some(r) = Record::decode(&real) {
            // Whatever decodes encodes back to something that decodes the same.
            prop_assert_eq!(Record::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn record_lists_with_huge_claimed_lengths(count in any::<u64>(), len in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        // A postcard list that claims `count` records, the first of `len` bytes.
        let mut frame = vec![1u8];
        for v in [count, len] {
            let mut v = v;
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 { frame.push(b); break; }
                frame.push(b | 0x80);
            }
        }
        frame.extend(tail);
        feed(&frame)?;
    }
}
