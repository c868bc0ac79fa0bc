//! Membership that cannot be lied to: a member of the mesh, authenticated as the sender of what
//! it sends, forges SWIM packets and claims about others; none of it evicts, kills or moves a
//! healthy peer.

mod mesh_net;

use foca::{Codec, Header, Message, PostcardCodec, State};
use mesh_net::*;
use spare_protocol::membership::{Member, MemberState, MembershipConfig, MeshEvent};
use spare_protocol::records::Record;

/// A foca packet as membership sends it: tag 0, the header, then the updates (if any).
fn packet(src: Member, dst: Member, message: Message<Member>, updates: &[foca::Member<Member>]) -> Vec<u8> {
    let mut out = vec![0u8];
    let header = Header { src, src_incarnation: 0, dst, message };
    PostcardCodec.encode_header(&header, &mut out).unwrap();
    if !updates.is_empty() {
        out.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for u in updates {
            PostcardCodec.encode_member(u, &mut out).unwrap();
        }
    }
    out
}

/// Four peers, settled, each with its signed advert, the wall clock set.
fn settled() -> Net {
    let mut net = Net::joined(4);
    for i in 0..4 {
        let me = net.peers[i].me().peer;
        net.peers[i].publish(advert(me, 1, 4), net.now);
    }
    net.run(5_000);
    for p in &mut net.peers {
        p.set_unix_time(1_000_000);
    }
    for i in 0..4 {
        assert_eq!(net.alive_seen_by(i), 3, "peer {i} settled");
    }
    net
}

fn state_at(net: &Net, at: usize, of: usize) -> Option<(Member, MemberState)> {
    let peer = net.peers[of].me().peer;
    net.peers[at].members().into_iter().find(|(m, _)| m.peer == peer)
}

fn downs_of(net: &Net, of: usize) -> usize {
    let peer = net.peers[of].me().peer;
    net.events.iter().flatten().filter(|e| matches!(e, MeshEvent::PeerDown(m) if m.peer == peer)).count()
}

#[test]
fn a_forged_header_naming_another_member_evicts_nobody() {
    // findings.md item 7: peer 2 sends peer 1 an announce whose header claims to come from
    // peer 0, at a bogus address, with an epoch far past any real one.
    let mut net = settled();
    let impostor = Member { addr: "127.0.0.1:9".into(), epoch: 1 << 62, ..net.peers[0].me().clone() };
    let forged = packet(impostor, net.peers[1].me().clone(), Message::Announce, &[]);
    let liar = net.peers[2].me().peer;
    let now = net.now;
    assert!(net.peers[1].handle_data(&forged, Some(liar), now).is_err(), "a source other than the sender is refused");
    // Its own header, with an absurd epoch, is refused too.
    let absurd = Member { epoch: 1 << 62, ..net.peers[2].me().clone() };
    let own = packet(absurd, net.peers[1].me().clone(), Message::Announce, &[]);
    assert!(net.peers[1].handle_data(&own, Some(liar), now).is_err(), "an implausible epoch is refused");
    net.run(15_000);
    for i in 1..4 {
        let (m, s) = state_at(&net, i, 0).unwrap();
        assert_eq!((m.addr.as_str(), m.epoch, s), ("peer0", 1, MemberState::Alive), "peer 0 as peer {i} sees it");
    }
    assert_eq!(downs_of(&net, 0), 0);
}

#[test]
fn a_claim_that_a_healthy_peer_is_dead_is_checked_and_refuted() {
    let mut net = settled();
    let victim = net.peers[0].me().clone();
    let liar = net.peers[2].me().clone();
    let dst = net.peers[1].me().clone();
    let claims = [foca::Member::new(victim.clone(), 0, State::Down), foca::Member::new(victim.clone(), 9, State::Suspect)];
    for claim in claims {
        let now = net.now;
        let lie = packet(liar.clone(), dst.clone(), Message::Gossip, std::slice::from_ref(&claim));
        net.peers[1].handle_data(&lie, Some(liar.peer), now).unwrap();
        // Not taken on hearsay: peer 1 asks the victim itself.
        assert_eq!(state_at(&net, 1, 0).map(|(_, s)| s), Some(MemberState::Alive));
        assert_eq!(net.peers[1].checks_in_flight(), 1);
        net.run(10_000);
        assert_eq!(net.peers[1].checks_in_flight(), 0, "the victim answered");
    }
    for i in 1..4 {
        assert_eq!(state_at(&net, i, 0).map(|(_, s)| s), Some(MemberState::Alive), "peer {i}");
    }
    assert_eq!(downs_of(&net, 0), 0);
}

#[test]
fn a_claim_that_a_silent_peer_is_dead_is_acted_on_after_the_own_check_fails() {
    let mut net = settled();
    net.down[0] = true;
    let gone = net.peers[0].me().clone();
    let teller = net.peers[2].me().clone();
    let dst = net.peers[1].me().clone();
    let now = net.now;
    let news = packet(teller.clone(), dst, Message::Gossip, &[foca::Member::new(gone, 0, State::Down)]);
    net.peers[1].handle_data(&news, Some(teller.peer), now).unwrap();
    assert_ne!(state_at(&net, 1, 0).map(|(_, s)| s), Some(MemberState::Dead), "not on hearsay");
    net.run(15_000);
    for i in 1..4 {
        assert_eq!(state_at(&net, i, 0).map(|(_, s)| s), Some(MemberState::Dead), "peer {i}");
    }
}

#[test]
fn addresses_come_from_signed_adverts_only() {
    let mut net = settled();
    let victim = net.peers[0].me().clone();
    let liar = net.peers[2].me().clone();
    let dst = net.peers[1].me().clone();
    // Another address for the same run, and a "later run" at another address.
    let moved = Member { addr: "evil:1".into(), ..victim.clone() };
    let reborn = Member { addr: "evil:1".into(), epoch: victim.epoch + 1, ..victim.clone() };
    // A later run at the right address, which peer 0 never started: it is asked, and denies.
    let ghost = Member { epoch: victim.epoch + 1, ..victim.clone() };
    let updates: Vec<_> = [moved, reborn, ghost].into_iter().map(|m| foca::Member::new(m, 3, State::Alive)).collect();
    let now = net.now;
    net.peers[1].handle_data(&packet(liar.clone(), dst, Message::Gossip, &updates), Some(liar.peer), now).unwrap();
    net.run(10_000);
    for i in 1..4 {
        let (m, s) = state_at(&net, i, 0).unwrap();
        assert_eq!((m.addr.as_str(), m.epoch, s), ("peer0", 1, MemberState::Alive), "peer {i}");
    }
}

#[test]
fn only_a_peer_itself_says_it_is_dead_or_raises_its_incarnation() {
    let mut net = settled();
    let target = net.peers[1].me().clone();
    let liar = net.peers[2].me().clone();
    let lies = [foca::Member::new(target.clone(), 0, State::Down), foca::Member::new(target.clone(), u16::MAX, State::Suspect)];
    let now = net.now;
    net.peers[1].handle_data(&packet(liar.clone(), target.clone(), Message::Gossip, &lies), Some(liar.peer), now).unwrap();
    net.run(5_000);
    // Believing either would have made peer 1 rejoin under a new epoch.
    assert_eq!(net.peers[1].me().epoch, target.epoch);
    assert_eq!(downs_of(&net, 1), 0);
}

/// A record sync (tag 1) carrying `records`.
fn sync(records: &[Record]) -> Vec<u8> {
    let mut frame = vec![1u8];
    frame.extend(postcard::to_stdvec(&records.iter().map(Record::encode).collect::<Vec<_>>()).unwrap());
    frame
}

#[test]
fn adverts_signed_by_fresh_keys_are_not_admitted() {
    let mut net = settled();
    let liar = net.peers[2].me().peer;
    let fresh: Vec<Record> = (0..200u8).map(|i| advert(spare_protocol::PeerId([100u8.wrapping_add(i); 32]), 1, 4)).collect();
    let now = net.now;
    net.peers[1].handle_data(&sync(&fresh), Some(liar), now).unwrap();
    net.run(1_000);
    assert_eq!(net.peers[1].adverts().len(), 4, "only the members' own");
}

#[test]
fn one_signer_holds_a_bounded_number_of_records() {
    let mut net = settled();
    let liar = net.peers[2].me().peer;
    let cap = spare_protocol::membership::MAX_RECORDS_PER_SIGNER;
    let ads: Vec<Record> = (0..cap as u32 + 100).map(|n| job_ad_numbered(liar, n)).collect();
    for chunk in ads.chunks(200) {
        let now = net.now;
        net.peers[1].handle_data(&sync(chunk), Some(liar), now).unwrap();
    }
    // Its advert is one of its records.
    assert_eq!(net.peers[1].job_ads().len(), cap - 1);
    assert!(net.peers[1].adverts().iter().any(|a| a.peer == liar));
}

#[test]
fn the_adverts_of_peers_long_dead_expire() {
    let mut net = settled();
    let gone = net.peers[3].me().peer;
    net.down[3] = true;
    net.run(MembershipConfig::lan(4).remove_down_after_ms + 2 * 60_000);
    for i in 0..3 {
        assert!(net.peers[i].adverts().iter().all(|a| a.peer != gone), "peer {i} forgot it");
        assert_eq!(net.peers[i].adverts().len(), 3, "peer {i} keeps the others'");
    }
}

#[test]
fn a_forged_job_ad_is_refused_even_by_a_newcomer() {
    // findings.md item 13: a newcomer hears a forged ad of a job before the real one.
    let mut net = Net::new(3);
    let origin = net.peers[0].me().peer;
    let forger = net.peers[2].me().peer;
    let real = job_ad(origin, 5);
    let Record::JobAd(real_ad) = &real else { unreachable!() };
    // As announcer, naming itself coordinator, with the highest sequence number; and as the
    // job's "origin".
    let as_announcer = spare_protocol::records::JobAd {
        announcer: forger,
        coordinators: vec![forger],
        seq: u64::MAX,
        ..real_ad.clone()
    };
    let as_origin = spare_protocol::records::JobAd { origin: forger, ..as_announcer.clone() };
    let mut with_own_list = as_announcer.clone();
    with_own_list.vouch(&signer(forger));
    for forged in [as_announcer, as_origin, with_own_list] {
        let mut r = Record::JobAd(forged);
        r.sign(&signer(forger));
        net.peers[1].handle_data(&sync(&[r]), Some(forger), 0).unwrap();
        assert!(net.peers[1].job_ads().is_empty(), "the newcomer took {:?}", net.peers[1].job_ads());
    }
    // The origin's own ad, and one by a coordinator it named, are taken.
    net.peers[1].handle_data(&sync(std::slice::from_ref(&real)), Some(origin), 0).unwrap();
    assert_eq!(net.peers[1].job_ads().len(), 1);
    let backup = net.peers[1].me().peer;
    let mut named = real_ad.clone();
    named.coordinators = vec![origin, backup];
    named.vouch(&signer(origin));
    let by_backup = spare_protocol::records::JobAd { announcer: backup, coordinators: vec![backup], seq: 9, ..named };
    let mut r = Record::JobAd(by_backup);
    r.sign(&signer(backup));
    net.peers[2].handle_data(&sync(&[r]), Some(backup), 0).unwrap();
    assert_eq!(net.peers[2].job_ads().len(), 1, "a newcomer takes a named coordinator's ad");
}

#[test]
fn a_newcomer_takes_the_ad_of_a_coordinator_added_after_the_origin_and_refuses_a_forged_link() {
    // Origin 0 named 1; 1, leading, added 2 at a top-up; 2 now leads. Peer 3 has never heard of
    // the job.
    let mut net = Net::new(4);
    let [origin, first, added, newcomer] = [0, 1, 2, 3].map(|i| net.peers[i].me().peer);
    let Record::JobAd(mut ad) = job_ad(origin, 5) else { unreachable!() };
    ad.coordinators = vec![origin, first];
    ad.vouch(&signer(origin));
    let mut by_first = spare_protocol::records::JobAd { announcer: first, coordinators: vec![first, added], seq: 2, ..ad };
    by_first.extend_chain(&signer(first));
    let mut by_added =
        spare_protocol::records::JobAd { announcer: added, coordinators: vec![added, newcomer], seq: 3, ..by_first.clone() };
    by_added.extend_chain(&signer(added));
    // A forger adds itself with a link it signed.
    let forger = spare_protocol::PeerId([9; 32]);
    let mut forged = spare_protocol::records::JobAd { announcer: forger, coordinators: vec![forger], seq: 4, ..by_first };
    forged.extend_chain(&signer(forger));
    let mut r = Record::JobAd(forged);
    r.sign(&signer(forger));
    net.peers[3].handle_data(&sync(&[r]), Some(forger), 0).unwrap();
    assert!(net.peers[3].job_ads().is_empty(), "a forged link is refused");
    let mut r = Record::JobAd(by_added);
    r.sign(&signer(added));
    net.peers[3].handle_data(&sync(&[r]), Some(added), 0).unwrap();
    assert_eq!(net.peers[3].job_ads().len(), 1, "the added coordinator's ad is taken");
}

/// Peer 2 (the liar) and peer 1 know each other; peer 0 has met neither. The clock set.
fn two_and_a_stranger() -> Net {
    let mut net = Net::new(3);
    let now = net.now;
    net.peers[2].join("peer1", now);
    net.run(3_000);
    for p in &mut net.peers {
        p.set_unix_time(1_000_000);
    }
    assert_eq!(net.alive_seen_by(1), 1);
    assert!(state_at(&net, 1, 0).is_none());
    net
}

#[test]
fn hearsay_does_not_introduce_a_made_up_run_of_a_peer_not_met_yet() {
    // Gap 5: the liar introduces a run of peer 0 it made up (a later epoch, at its address or
    // another) to peer 1, which has not met peer 0. Taken, it failed its probes and was held
    // dead for 10 min, while peer 0's real run lost the conflict to it there.
    let mut net = two_and_a_stranger();
    let real = net.peers[0].me().clone();
    let liar = net.peers[2].me().clone();
    let dst = net.peers[1].me().clone();
    let made_up = [Member { addr: "evil:1".into(), epoch: 50, ..real.clone() }, Member { epoch: 60, ..real.clone() }];
    let updates: Vec<_> = made_up.into_iter().map(|m| foca::Member::new(m, 0, State::Alive)).collect();
    let now = net.now;
    net.peers[1].handle_data(&packet(liar.clone(), dst, Message::Gossip, &updates), Some(liar.peer), now).unwrap();
    assert!(state_at(&net, 1, 0).is_none(), "not introduced on hearsay");
    net.run(2_000);
    assert!(state_at(&net, 1, 0).is_none(), "the made-up runs never answered");
    // The real run joins, and is alive there.
    let now = net.now;
    net.peers[0].join("peer1", now);
    net.run(10_000);
    let (m, s) = state_at(&net, 1, 0).unwrap();
    assert_eq!((m.addr.as_str(), m.epoch, s), ("peer0", real.epoch, MemberState::Alive));
    assert_eq!(downs_of(&net, 0), 0);
}

#[test]
fn hearsay_of_the_run_a_peer_s_advert_names_or_that_answers_introduces_it() {
    let mut net = two_and_a_stranger();
    let real = net.peers[0].me().clone();
    let liar = net.peers[2].me().clone();
    let dst = net.peers[1].me().clone();
    let news = packet(liar.clone(), dst.clone(), Message::Gossip, &[foca::Member::new(real.clone(), 0, State::Alive)]);
    // Without its advert, the claimed run is pinged: it answers, and is in.
    let now = net.now;
    net.peers[1].handle_data(&news, Some(liar.peer), now).unwrap();
    assert!(state_at(&net, 1, 0).is_none());
    assert_eq!(net.peers[1].checks_in_flight(), 1);
    net.run(1_000);
    assert_eq!(state_at(&net, 1, 0).map(|(m, s)| (m.epoch, s)), Some((real.epoch, MemberState::Alive)));
    // Peer 3's signed advert names its run: hearsay of that run is taken at once.
    let mut net = Net::new(4);
    let now = net.now;
    net.peers[2].join("peer1", now);
    net.run(3_000);
    let stranger = net.peers[3].me().clone();
    let Record::Advert(mut a) = advert(stranger.peer, 1, 4) else { unreachable!() };
    a.epoch = stranger.epoch;
    let mut signed = Record::Advert(a);
    signed.sign(&signer(stranger.peer));
    let now = net.now;
    net.peers[1].handle_data(&sync(&[signed]), Some(stranger.peer), now).unwrap();
    let news = packet(liar.clone(), net.peers[1].me().clone(), Message::Gossip, &[foca::Member::new(stranger, 0, State::Alive)]);
    net.peers[1].handle_data(&news, Some(liar.peer), now).unwrap();
    assert_eq!(state_at(&net, 1, 3).map(|(_, s)| s), Some(MemberState::Alive));
}

#[test]
fn a_liar_s_turn_undead_makes_a_peer_rejoin_at_most_once_a_minute() {
    let mut net = settled();
    let liar = net.peers[2].me().clone();
    let epoch = net.peers[1].me().epoch;
    for _ in 0..3 {
        let target = net.peers[1].me().clone();
        let now = net.now;
        let _ = net.peers[1].handle_data(&packet(liar.clone(), target, Message::TurnUndead, &[]), Some(liar.peer), now);
        net.run(100);
    }
    assert_eq!(net.peers[1].me().epoch, epoch + 1, "one rejoin, not three");
    net.run(spare_protocol::membership::TURN_UNDEAD_EVERY_MS);
    let target = net.peers[1].me().clone();
    let now = net.now;
    net.peers[1].handle_data(&packet(liar.clone(), target, Message::TurnUndead, &[]), Some(liar.peer), now).unwrap();
    assert_eq!(net.peers[1].me().epoch, epoch + 2, "a minute later, one more");
}
