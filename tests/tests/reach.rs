//! Reachability on one machine: peers that can dial each other find themselves reachable; a
//! dial-back dials only the asker, at the address its request came from, and must meet its
//! PeerId, once per asker every 10 s; a relay passes gossip down the stream of a peer attached to
//! it, naming the sender and with its signature, and forgets the peer when its stream ends. (A peer behind a real NAT:
//! `worker/tests/nat.rs`.)

use spare_peer::identity::Identity;
use spare_proto as pb;
use spare_protocol::reachability::Verdict;
use spare_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_can_dial_each_other_find_themselves_reachable() {
    let dir = tempfile::tempdir().unwrap();
    // Three: a peer is reachable when two others dialed it back (one's word is not enough).
    let peers = start_mesh(dir.path(), &honest_peers(3, 1)).await;
    eventually("every peer to find itself reachable, and say so", || {
        let ok = peers.iter().all(|p| p.node.reachability() == Verdict::Reachable);
        async move { ok.then_some(()) }
    })
    .await;
    let listed = client(&peers[0]).await.peers().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|p| p.reachability() == pb::Reachability::Reachable), "{listed:?}");
    stop_all(peers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_back_dials_only_the_asker_and_checks_its_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir.path().join("a"), 1).await;
    let b = start(&dir.path().join("b"), 1).await;

    // Asked as B (its own key, from its data directory), A dials B back and meets B.
    let b_key = Identity::load_or_create(&dir.path().join("b")).unwrap();
    let mut as_b = mesh_client(a.addr, &b_key, Some(a.node.peer_id())).await.unwrap();
    let r = as_b.dial_back(pb::DialBackRequest { addr: b.addr.to_string() }).await.unwrap().into_inner();
    assert!(r.reached, "{r:?}");
    assert_eq!(r.dialed, b.addr.to_string(), "its address, on this machine");

    // Asked by a key that does not serve there (at A's own address, where A answers): the
    // handshake meets another PeerId, so not reached.
    let me = Identity::generate().unwrap();
    let mut as_me = mesh_client(a.addr, &me, Some(a.node.peer_id())).await.unwrap();
    let r = as_me.dial_back(pb::DialBackRequest { addr: a.addr.to_string() }).await.unwrap().into_inner();
    assert!(!r.reached && !r.error.is_empty(), "{r:?}");
    // Once per asker every 10 s.
    let e = as_me.dial_back(pb::DialBackRequest { addr: a.addr.to_string() }).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // A third party's address is not dialed: the asker's own IP is, at that port.
    let other = Identity::generate().unwrap();
    let mut as_other = mesh_client(a.addr, &other, None).await.unwrap();
    let r = as_other.dial_back(pb::DialBackRequest { addr: format!("192.0.2.7:{}", b.addr.port()) }).await.unwrap().into_inner();
    assert_eq!(r.dialed, format!("127.0.0.1:{}", b.addr.port()), "{r:?}");
    assert!(!r.reached, "B is there, not the asker: {r:?}");
    // No port, no dial; and never in plaintext (no asker to check).
    let e = mesh_client(a.addr, &Identity::generate().unwrap(), None).await.unwrap().dial_back(pb::DialBackRequest { addr: "127.0.0.1".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut plain = pb::mesh_service_client::MeshServiceClient::connect(format!("http://{}", a.addr)).await.unwrap();
    let e = plain.dial_back(pb::DialBackRequest { addr: b.addr.to_string() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    stop_all(vec![a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_passes_gossip_down_an_attached_peers_stream() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path(), 1).await;
    let (behind, sender) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let to = behind.peer_id().to_hex();
    // Signed by the sender for the peer behind NAT, which checks it (the relay only passes it).
    let gossip = |data: &[u8], to: &str| pb::GossipRequest {
        data: data.to_vec(),
        peer_id: String::new(),
        signature: Vec::new(),
        to: to.to_string(),
        relay_signature: sender.sign(&spare_peer::wire::signing::relayed(&behind.peer_id(), 7, data)).to_vec(),
        relay_sent_at_ms: 7,
    };

    let mut from_sender = mesh_client(relay.addr, &sender, None).await.unwrap();
    let e = from_sender.gossip(gossip(b"early", &to)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "not attached yet: {e:?}");

    let mut stream = mesh_client(relay.addr, &behind, None).await.unwrap().attach(pb::AttachRequest {}).await.unwrap().into_inner();
    from_sender.gossip(gossip(b"for the peer behind NAT", &to)).await.unwrap();
    let got = within("the relayed packet", stream.next()).await.expect("the stream is open").unwrap();
    assert_eq!(got.from, sender.peer_id().to_hex(), "named as sent by the peer whose link it came on");
    assert_eq!(got.data, b"for the peer behind NAT");
    assert_eq!(got.signature, gossip(b"for the peer behind NAT", &to).relay_signature, "the sender's signature, passed down");
    assert_eq!(got.sent_at_ms, 7, "with the time it was signed at");
    let e = from_sender.gossip(gossip(&vec![0; 65 << 10], &to)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "a relayed packet is at most 64 KiB: {e:?}");

    // Its stream gone, the relay forgets it.
    drop(stream);
    eventually("the relay to forget the detached peer", || {
        let mut c = from_sender.clone();
        let req = gossip(b"late", &to);
        async move { matches!(c.gossip(req).await, Err(e) if e.code() == Code::NotFound).then_some(()) }
    })
    .await;
    relay.shutdown().await;
}
