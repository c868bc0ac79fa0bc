//! Membership that cannot be lied to, with real peers on loopback: a stranger with a fresh key,
//! over a correct TLS link, forges SWIM packets about a member of the mesh (findings.md, item
//! 7); the member stays alive at its address, under its epoch, and a job at it completes.

use foca::{Codec, Header, Message, PostcardCodec, State};
use spare_peer::identity::Identity;
use spare_proto as pb;
use spare_protocol::membership::{Member, MemberState};
use spare_sdk::{Job, JobState};
use spare_tests::*;
use tonic::Code;

/// A foca packet as membership frames it: tag 0, the header, then the updates (if any).
fn packet(src: Member, dst: Member, message: Message<Member>, updates: &[foca::Member<Member>]) -> Vec<u8> {
    let mut out = vec![0u8];
    PostcardCodec.encode_header(&Header { src, src_incarnation: 0, dst, message }, &mut out).expect("a header");
    if !updates.is_empty() {
        out.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for u in updates {
            PostcardCodec.encode_member(u, &mut out).expect("an update");
        }
    }
    out
}

fn gossip(data: Vec<u8>) -> pb::GossipRequest {
    pb::GossipRequest { data, peer_id: String::new(), signature: Vec::new(), to: String::new(), relay_signature: Vec::new(), relay_sent_at_ms: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_swim_claims_evict_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    let victim = peers[0].node.mesh().membership.me().clone();
    let target = peers[1].node.mesh().membership.me().clone();
    let stranger = Identity::generate().unwrap();
    let mut link = mesh_client(peers[1].addr, &stranger, Some(target.peer)).await.expect("TLS to peer 1");

    // The header of finding 7: the victim's id at a dead address, with an absurd epoch.
    let impostor = Member { addr: "127.0.0.1:9".into(), epoch: 1 << 62, ..victim.clone() };
    let e = link.gossip(gossip(packet(impostor, target.clone(), Message::Announce, &[]))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not the peer that sent it"), "{}", e.message());

    // Under its own name, the stranger says the victim is dead: peer 1 asks the victim itself.
    let me = Member { peer: stranger.peer_id(), addr: "127.0.0.1:9".into(), epoch: 1 };
    let claim = foca::Member::new(victim.clone(), 0, State::Down);
    link.gossip(gossip(packet(me, target, Message::Gossip, &[claim]))).await.expect("a packet under its own name is taken");
    eventually("peer 1 to have its answer", || {
        let pending = peers[1].node.mesh().membership.checks_in_flight();
        async move { (pending == 0).then_some(()) }
    })
    .await;

    // A job at the victim runs on the mesh as before.
    let origin = client(&peers[0]).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..20_000, 2_000).quorum(2).build().unwrap();
    let id = origin.submit(&job).await.unwrap();
    let end = within("job end", origin.wait(&id)).await.expect("wait");
    assert_eq!(end.state, JobState::Completed, "{end:?}");
    for p in &peers[1..] {
        let seen = p.node.peers().into_iter().find(|v| v.peer == victim.peer).expect("the victim is known");
        assert_eq!((seen.addr.as_str(), seen.state), (victim.addr.as_str(), MemberState::Alive));
        let epoch = p.node.mesh().membership.state_of(&victim.peer).map(|(m, _)| m.epoch);
        assert_eq!(epoch, Some(victim.epoch), "the victim's run, as peer {} sees it", p.node.peer_id().short());
    }
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_request_replayed_here_or_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let peers = start_mesh(dir.path(), &honest_peers(2, 1)).await;
    let origin = client(&peers[0]).await;
    let job = Job::builder().module_bytes(guest("primes")).range(0..20_000, 2_000).quorum(2).build().unwrap();
    let id: spare_protocol::JobId = origin.submit(&job).await.unwrap().as_str().parse().unwrap();
    let (a, b) = (peers[0].node.peer_id(), peers[1].node.peer_id());
    // A worker's lease request, signed for peer 0, as peer 0 could capture and resend it.
    let worker = Identity::generate().unwrap();
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let nonce = spare_peer::wire::signing::request_nonce();
    let req = pb::LeaseRequest {
        peer_id: worker.peer_id().to_hex(),
        job_id: id.to_hex(),
        max: 1,
        timestamp_ms: ts,
        signature: worker.sign(&spare_peer::wire::signing::lease(&id, 1, ts, &a, &nonce)).to_vec(),
        receiver: a.to_hex(),
        request_nonce: nonce,
    };
    let mut to_a = mesh_client(peers[0].addr, &worker, Some(a)).await.expect("TLS to peer 0");
    to_a.lease(req.clone()).await.expect("the first is taken");
    let e = to_a.lease(req.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("received before"), "{}", e.message());
    // At another peer (over the worker's own link: what peer 0 could do with its key is the
    // same request, which names peer 0).
    let mut to_b = mesh_client(peers[1].addr, &worker, Some(b)).await.expect("TLS to peer 1");
    let e = to_b.lease(req).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("signed for another peer"), "{}", e.message());
    stop_all(peers).await;
}
