//! Membership on a virtual network: peers join through one address, learn each other, spread
//! signed records, notice a silent peer die, and drop forged records; a settled mesh stays
//! quiet, and what a peer missed comes back from digests.

mod mesh_net;

use mesh_net::*;
use spare_protocol::membership::{MeshEvent, Member, MemberState, Membership, MembershipConfig};
use spare_protocol::records::Record;

#[test]
fn peers_join_through_one_address_and_see_each_other() {
    let mut net = Net::new(5);
    let first = net.peers[0].me().addr.clone();
    for i in 1..5 {
        let now = net.now;
        net.peers[i].join(&first, now);
    }
    net.run(5_000);
    for i in 0..5 {
        assert_eq!(net.alive_seen_by(i), 4, "peer {i} sees {:?}", net.peers[i].members());
    }
}

#[test]
fn records_spread_newer_versions_win_and_newcomers_catch_up() {
    let mut net = Net::new(6);
    let first = net.peers[0].me().addr.clone();
    // Peer 5 joins late.
    for i in 1..5 {
        let now = net.now;
        net.peers[i].join(&first, now);
    }
    net.run(3_000);
    for i in 0..5 {
        let me = net.peers[i].me().peer;
        assert!(net.peers[i].publish(advert(me, 1, 4), net.now));
    }
    let origin = net.peers[2].me().peer;
    net.peers[2].publish(job_ad(origin, 7), net.now);
    net.run(3_000);
    for i in 0..5 {
        assert_eq!(net.peers[i].adverts().len(), 5, "peer {i}");
        assert_eq!(net.peers[i].job_ads().len(), 1, "peer {i}");
    }
    // A newer advert replaces the older one everywhere.
    let p1 = net.peers[1].me().peer;
    net.peers[1].publish(advert(p1, 2, 1), net.now);
    net.run(3_000);
    for i in 0..5 {
        let a = net.peers[i].adverts().into_iter().find(|a| a.peer == p1).unwrap();
        assert_eq!((a.seq, a.cpus_free), (2, 1), "peer {i}");
    }
    // The late peer learns every advert and the job from the members' direct syncs.
    let now = net.now;
    net.peers[5].join(&first, now);
    net.run(5_000);
    assert_eq!(net.peers[5].adverts().len(), 5);
    assert_eq!(net.peers[5].job_ads().len(), 1);
    assert!(net.events[5].iter().any(|e| matches!(e, MeshEvent::Record(Record::JobAd(_)))));
}

#[test]
fn a_silent_peer_is_suspected_then_declared_dead_and_can_rejoin() {
    let mut net = Net::new(4);
    let first = net.peers[0].me().addr.clone();
    for i in 1..4 {
        let now = net.now;
        net.peers[i].join(&first, now);
    }
    net.run(3_000);
    net.down[3] = true;
    let gone = net.peers[3].me().peer;
    net.run(15_000);
    for i in 0..3 {
        let state = net.peers[i].members().into_iter().find(|(m, _)| m.peer == gone).map(|(_, s)| s);
        assert_eq!(state, Some(MemberState::Dead), "peer {i}");
        assert!(net.events[i].iter().any(|e| matches!(e, MeshEvent::PeerDown(m) if m.peer == gone)));
    }
    // It comes back (a restart: a later epoch) and is alive again everywhere.
    let me = Member { peer: gone, addr: "peer3".into(), epoch: 2 };
    net.peers[3] = Membership::new(me, MembershipConfig::lan(4), 99, verifier());
    net.down[3] = false;
    let now = net.now;
    net.peers[3].join(&first, now);
    net.run(5_000);
    for i in 0..3 {
        let state = net.peers[i].members().into_iter().find(|(m, _)| m.peer == gone).map(|(m, s)| (m.epoch, s));
        assert_eq!(state, Some((2, MemberState::Alive)), "peer {i}");
    }
}

/// A peer that leaves (SIGTERM) tells every member itself: each declares it dead at once, not
/// after a probe and SWIM's suspicion time (finding 17).
#[test]
fn a_peer_that_leaves_is_dead_everywhere_at_once() {
    let mut net = Net::joined(6);
    net.run(3_000);
    let gone = net.peers[5].me().peer;
    let now = net.now;
    net.peers[5].leave(now);
    // Its notices go out; after that it is silent, as a process that exited.
    net.run(10);
    net.down[5] = true;
    for i in 0..5 {
        let state = net.peers[i].members().into_iter().find(|(m, _)| m.peer == gone).map(|(_, s)| s);
        assert_eq!(state, Some(MemberState::Dead), "peer {i} holds the leaver {state:?}");
        assert!(net.events[i].iter().any(|e| matches!(e, MeshEvent::PeerDown(m) if m.peer == gone)), "peer {i}");
    }
}

#[test]
fn forged_records_are_dropped_and_reported() {
    let mut net = Net::new(3);
    let first = net.peers[0].me().addr.clone();
    for i in 1..3 {
        let now = net.now;
        net.peers[i].join(&first, now);
    }
    net.run(3_000);
    // Peer 1 publishes an advert claiming to be peer 2, signed with its own key.
    let victim = net.peers[2].me().peer;
    let mut forged = advert(victim, 5, 99);
    if let Record::Advert(a) = &mut forged {
        a.signature = blake3::keyed_hash(&[7; 32], b"whatever").as_bytes().to_vec();
    }
    assert!(!forged.verify(&verifier()));
    // Our own forgeries are refused before they leave.
    assert!(!net.peers[1].publish(forged.clone(), net.now));
    // A liar sends the bytes straight to peer 0 as a record sync (tag 1, postcard list).
    let mut frame = vec![1u8];
    frame.extend(postcard::to_stdvec(&vec![forged.encode()]).unwrap());
    let now = net.now;
    let liar = net.peers[1].me().peer;
    net.peers[0].handle_data(&frame, Some(liar), now).unwrap();
    net.run(3_000);
    assert!(net.events[0].iter().any(|e| matches!(e, MeshEvent::Invalid { sender: Some(p) } if *p == liar)));
    // Garbage is refused as malformed.
    assert!(net.peers[0].handle_data(&[9, 9, 9], None, now).is_err());
    assert!(net.peers[0].handle_data(&[], None, now).is_err());
    for i in [0, 2] {
        assert!(net.peers[i].adverts().iter().all(|a| a.cpus_free != 99), "peer {i} took a forged advert");
    }
}

#[test]
fn only_its_announcer_or_coordinators_can_replace_a_job_ad() {
    let mut net = Net::new(3);
    let first = net.peers[0].me().addr.clone();
    for i in 1..3 {
        let now = net.now;
        net.peers[i].join(&first, now);
    }
    net.run(3_000);
    let origin = net.peers[0].me().peer;
    net.peers[0].publish(job_ad(origin, 5), net.now);
    net.run(2_000);
    // Peer 2 signs an ad for the same job, with a higher sequence number, marking it done.
    let thief = net.peers[2].me().peer;
    let mut hijack = job_ad(thief, 5);
    if let Record::JobAd(j) = &mut hijack {
        j.job = job_id(origin, 5);
        j.seq = u64::MAX;
        j.done = true;
        j.announcer = thief;
    }
    hijack.sign(&signer(thief));
    let mut frame = vec![1u8];
    frame.extend(postcard::to_stdvec(&vec![hijack.encode()]).unwrap());
    let now = net.now;
    net.peers[1].handle_data(&frame, Some(thief), now).unwrap();
    net.run(1_000);
    let ad = net.peers[1].job_ads().into_iter().find(|a| a.job == job_id(origin, 5)).unwrap();
    assert_eq!((ad.origin, ad.done), (origin, false));
    // Correctly signed, so not held against anyone: reported as a rival for the job's
    // coordinators to settle, once however many copies arrive.
    let rivals = net.events[1].iter().filter(|e| matches!(e, MeshEvent::Rival(a) if a.announcer == thief)).count();
    assert_eq!(rivals, 1);
    assert!(!net.events[1].iter().any(|e| matches!(e, MeshEvent::Invalid { .. })));
    let now = net.now;
    net.peers[1].handle_data(&frame, Some(thief), now).unwrap();
    net.run(1_000);
    assert_eq!(net.events[1].iter().filter(|e| matches!(e, MeshEvent::Rival(_))).count(), 1);
}

#[test]
fn a_joiner_learns_every_member_in_one_round_trip() {
    let mut net = Net::new(21);
    let first = net.peers[0].me().addr.clone();
    for i in 1..20 {
        let now = net.now;
        net.peers[i].join(&first, now);
    }
    net.run(20_000);
    assert_eq!(net.alive_seen_by(0), 19, "the mesh formed");
    // The joiner greets one member by address; that member announces itself back, and the
    // joiner asks it for its feed of members rather than waiting to be probed by each.
    let now = net.now;
    net.peers[20].join(&first, now);
    net.run(200);
    assert_eq!(net.alive_seen_by(20), 20, "sees {:?}", net.peers[20].members());
}

#[test]
fn a_peer_that_missed_a_jobs_ad_gets_it_from_a_digest() {
    let mut net = Net::joined(5);
    net.run(5_000);
    // Peer 4 hears nothing while the job's ad spreads, and its author is gone when peer 4 is
    // back, so neither gossip (its retransmissions are spent) nor the author's direct sync
    // can bring it: only the digests members exchange.
    net.down[4] = true;
    let origin = net.peers[2].me().peer;
    assert!(net.peers[2].publish(job_ad(origin, 7), net.now));
    net.run(3_000);
    net.down[2] = true;
    net.down[4] = false;
    net.run(3_000);
    assert_eq!(net.peers[4].job_ads().len(), 0, "not by gossip");
    net.run(MembershipConfig::lan(5).digest_period_ms);
    assert_eq!(net.peers[4].job_ads().len(), 1);
    for i in [0, 1, 3] {
        assert_eq!(net.peers[i].job_ads().len(), 1, "peer {i}");
    }
}

#[test]
fn a_settled_mesh_sends_little_more_than_probes() {
    let mut net = Net::joined(20);
    for i in 0..20 {
        let me = net.peers[i].me().peer;
        net.peers[i].publish(advert(me, 1, 4), net.now);
    }
    net.run(20_000);
    for i in 0..20 {
        assert_eq!(net.peers[i].adverts().len(), 20, "peer {i}: every advert, directly");
    }
    // A SWIM probe is a ping and an ack of about 110 bytes each; a digest goes every 30 s.
    // Nothing else is news, so nothing else goes out (records are not re-sent, nor are
    // members' feeds asked for when the digests agree).
    let before = net.sent;
    net.run(60_000);
    let per_peer_per_second = (net.sent - before) as f64 / 20.0 / 60.0;
    assert!(per_peer_per_second < 300.0, "{per_peer_per_second:.0} B/s per peer");
}

#[test]
fn a_restarted_member_gets_every_advert_again() {
    let mut net = Net::joined(4);
    for i in 0..4 {
        let me = net.peers[i].me().peer;
        net.peers[i].publish(advert(me, 1, 4), net.now);
    }
    net.run(5_000);
    assert_eq!(net.peers[3].adverts().len(), 4);
    // Peer 3 restarts: the same peer under a later epoch, holding no records. The others see it
    // renamed rather than new, and must sync it all the same.
    let me = Member { epoch: 2, ..net.peers[3].me().clone() };
    net.peers[3] = Membership::new(me.clone(), MembershipConfig::lan(4), 99, verifier());
    net.peers[3].publish(advert(me.peer, 2, 4), net.now);
    let first = net.peers[0].me().addr.clone();
    let now = net.now;
    net.peers[3].join(&first, now);
    net.run(1_000);
    assert_eq!(net.peers[3].adverts().len(), 4, "{:?}", net.peers[3].adverts());
}

#[test]
fn a_restored_view_sends_nothing_and_holds_every_member_and_advert() {
    let mut net = Net::new(6);
    let members: Vec<Member> = net.peers.iter().map(|p| p.me().clone()).collect();
    let adverts: Vec<Record> = members.iter().map(|m| advert(m.peer, 1, 4)).collect();
    for p in &mut net.peers {
        p.restore(members.iter().cloned(), &adverts, 0);
    }
    for (i, p) in net.peers.iter_mut().enumerate() {
        assert_eq!(p.poll_send(), None, "peer {i} sends nothing");
        assert_eq!(p.adverts().len(), 6, "peer {i}");
        let ups = std::iter::from_fn(|| p.poll_event()).filter(|e| matches!(e, MeshEvent::PeerUp(_))).count();
        assert_eq!(ups, 5, "peer {i}: the others came up");
    }
    for i in 0..6 {
        assert_eq!(net.alive_seen_by(i), 5, "peer {i}");
    }
    // It is a mesh like any other: a silent member is found dead by the probes.
    net.down[5] = true;
    net.run(15_000);
    let gone = members[5].peer;
    for i in 0..5 {
        assert_eq!(net.alive_seen_by(i), 4, "peer {i}");
        assert!(net.events[i].iter().any(|e| matches!(e, MeshEvent::PeerDown(m) if m.peer == gone)), "peer {i}");
    }
}

#[test]
fn a_jobs_ad_heard_is_pushed_on_at_once_and_pushes_are_spaced() {
    let mut net = Net::new(8);
    let members: Vec<Member> = net.peers.iter().map(|p| p.me().clone()).collect();
    for p in &mut net.peers {
        p.restore(members.iter().cloned(), &[], 0);
    }
    // Peer 1 hears a job's ad (from its origin, peer 0) and sends it on before any timer.
    let origin = members[0].peer;
    let ad = job_ad(origin, 7).encode();
    // As a records message (tag 1, then the records), the way a digest's answer brings ads.
    let from_origin = |p: &mut Membership, ad: &[u8], now| {
        let body = postcard::to_stdvec(&vec![ad.to_vec()]).unwrap();
        let mut msg = vec![1u8];
        msg.extend_from_slice(&body);
        p.handle_data(&msg, Some(origin), now).unwrap();
        std::iter::from_fn(|| p.poll_send()).count()
    };
    assert!(from_origin(&mut net.peers[1], &ad, 0) >= 2, "pushed to random members at once");
    // Another ad 10 ms later waits for the next push or gossip.
    let second = job_ad(origin, 8).encode();
    assert_eq!(from_origin(&mut net.peers[1], &second, 10), 0);
    let third = job_ad(origin, 9).encode();
    assert!(from_origin(&mut net.peers[1], &third, 60) >= 2, "and the next one goes");
}
