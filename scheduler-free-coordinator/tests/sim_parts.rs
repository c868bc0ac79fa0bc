//! The simulator's own parts (`spare_protocol::sim`): its event queue's order, the stand-in
//! identities and signatures, the seeded generator and the workload's outputs.

use spare_protocol::sim::keys::{addr, index_of, index_of_addr, peer_id, signer, verifier};
use spare_protocol::sim::queue::{Event, Queue};
use spare_protocol::sim::rng::Rng;
use spare_protocol::sim::workload::{Behaviour, honest_hash, output};
use spare_protocol::{BlobId, PeerId};

#[test]
fn time_then_push_order_near_and_far() {
    // Past the queue's ring of near buckets (8,192 ms).
    const FAR: u64 = 3 * 8_192;
    let mut q = Queue::default();
    let ev = |p: u32| Event::Work { peer: p };
    q.push(5, ev(1));
    q.push(FAR, ev(2));
    q.push(5, ev(3));
    q.push(FAR, ev(4));
    q.push(0, ev(5));
    let mut out = Vec::new();
    while let Some((at, e)) = q.pop() {
        let Event::Work { peer } = e else { unreachable!() };
        out.push((at, peer));
        if peer == 1 {
            q.push(FAR, ev(6));
            q.push(5, ev(7));
        }
    }
    assert_eq!(out, vec![(0, 5), (5, 1), (5, 3), (5, 7), (FAR, 2), (FAR, 4), (FAR, 6)]);
}

#[test]
fn ids_and_addresses_round_trip_and_tags_bind_signer_and_message() {
    let p = peer_id(1, 70_000);
    assert_eq!(index_of(&p), 70_000);
    assert_eq!(index_of_addr(&addr(70_000)), Some(70_000));
    assert_eq!(index_of_addr("127.0.0.1:7070"), None);
    let v = verifier();
    let s = signer(p)(b"hello");
    assert!(v(&p, b"hello", &s));
    assert!(!v(&p, b"hellp", &s));
    assert!(!v(&peer_id(1, 3), b"hello", &s));
}

#[test]
fn same_seed_same_stream_and_bounds_hold() {
    let (mut a, mut b) = (Rng::new(7), Rng::new(7));
    for _ in 0..100 {
        assert_eq!(a.next_u64(), b.next_u64());
        let r = a.range(1, 20);
        assert!((1..=20).contains(&r));
        b.range(1, 20);
    }
    assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
}

#[test]
fn honest_peers_agree_liars_do_not_colluders_do() {
    let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
    assert_eq!(output(Behaviour::Honest, &a, 5, 32), output(Behaviour::Honest, &b, 5, 32));
    assert_ne!(output(Behaviour::Liar, &a, 5, 32), output(Behaviour::Liar, &b, 5, 32));
    assert_ne!(output(Behaviour::Liar, &a, 5, 32), output(Behaviour::Honest, &a, 5, 32));
    assert_eq!(output(Behaviour::Colluder, &a, 5, 32), output(Behaviour::Colluder, &b, 5, 32));
    assert_ne!(output(Behaviour::Colluder, &a, 5, 32), output(Behaviour::Honest, &a, 5, 32));
    assert_eq!(honest_hash(5, 32), BlobId::of(&output(Behaviour::Honest, &a, 5, 32)));
}
