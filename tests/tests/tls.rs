//! Peers talk over TLS 1.3 only, each checking the other's PeerId: a mesh call in plaintext, or
//! over a connection that is another peer's, is refused; a peer that is not the one expected is
//! refused by whoever dials it, peer or client.

use spare_proto as pb;
use spare_peer::identity::Identity;
use spare_tests::*;
use tonic::Code;

/// A gossip message correctly signed by `who` (its content does not matter: the connection is
/// judged first).
fn gossip(who: &Identity) -> pb::GossipRequest {
    let data = vec![0u8; 8];
    let signature = who.sign(&spare_peer::wire::signing::gossip(&data)).to_vec();
    pb::GossipRequest { data, peer_id: who.peer_id().to_hex(), signature, to: String::new(), relay_signature: Vec::new(), relay_sent_at_ms: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_calls_come_only_over_tls_from_their_signer() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 1).await;
    let me = Identity::generate().unwrap();

    // Plaintext from this machine is a client's connection: a mesh call on it is refused.
    let mut plain = pb::mesh_service_client::MeshServiceClient::connect(format!("http://{}", peer.addr)).await.unwrap();
    let e = plain.gossip(gossip(&me)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("only over TLS"), "{}", e.message());
    // Client calls still work on it.
    let info = client(&peer).await.info().await.unwrap();
    assert_eq!(info.peer_id, peer.node.peer_id().to_hex());

    // Over TLS as `me`, a request signed by `me` is judged on its content (here, not a SWIM
    // packet: INVALID_ARGUMENT), one signed by someone else is refused.
    let mut tls = mesh_client(peer.addr, &me, Some(peer.node.peer_id())).await.expect("TLS to the right peer");
    let e = tls.gossip(gossip(&me)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "past the connection check: {e:?}");
    let other = Identity::generate().unwrap();
    let e = tls.gossip(gossip(&other)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("signed by"), "{}", e.message());
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_the_one_expected_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let peer = start(dir.path(), 1).await;
    let someone_else = Identity::generate().unwrap();

    // A dialling peer that expects another PeerId at this address gets no connection.
    let me = Identity::generate().unwrap();
    let e = mesh_client(peer.addr, &me, Some(someone_else.peer_id())).await.map(|_| ()).unwrap_err();
    let shown = format!("{e:?}");
    assert!(shown.contains("not the expected"), "{shown}");

    // A client given ADDR@PEERID is refused at the handshake, and says which peer it met; the
    // right PeerId connects (over TLS, even on loopback, since a PeerId was given).
    let wrong = format!("{}@{}", peer.addr, someone_else.peer_id().to_hex());
    match spare_sdk::Client::connect(wrong).await {
        Err(spare_sdk::Error::PeerIdentity(m)) => {
            assert!(m.contains(&peer.node.peer_id().to_hex()) && m.contains(&someone_else.peer_id().to_hex()), "{m}")
        }
        other => panic!("expected a PeerIdentity error, got {other:?}"),
    }
    let right = format!("{}@{}", peer.addr, peer.node.peer_id().to_hex());
    let c = spare_sdk::Client::connect(right).await.expect("the right PeerId");
    assert_eq!(c.info().await.unwrap().peer_id, peer.node.peer_id().to_hex());
    peer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_with_the_wrong_peer_id_is_never_joined() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(&dir.path().join("a"), 1).await;
    let impostor = Identity::generate().unwrap();
    let mut c = config(&dir.path().join("b"), 1);
    c.bootstrap = vec![format!("{}@{}", first.addr, impostor.peer_id().to_hex())];
    let second = spare_peer::Node::start(c).await.unwrap();
    // The right pin joins; the wrong one never does (its TLS handshakes fail).
    let mut c = config(&dir.path().join("c"), 1);
    c.bootstrap = vec![format!("{}@{}", first.addr, first.node.peer_id().to_hex())];
    let third = spare_peer::Node::start(c).await.unwrap();
    let ids = [first.node.peer_id(), third.node.peer_id()];
    eventually("the correctly pinned peer to join", || {
        let joined = sees_alive(&third.node, &ids) && sees_alive(&first.node, &ids);
        async move { joined.then_some(()) }
    })
    .await;
    assert!(
        !second.node.peers().iter().any(|v| v.peer == first.node.peer_id()),
        "a peer that pinned another PeerId for its bootstrap address never met it"
    );
    stop_all(vec![first, second, third]).await;
}
