//! `spare peers`: the mesh as one peer sees it: every peer's id, address, slots, state and
//! reachability (whether other peers can dial it).

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use spare_sdk::proto::{PeerState, Reachability};

/// Options of `spare peers`.
#[derive(Args, Debug)]
pub struct PeersArgs {
    /// The peer to ask.
    #[arg(long, default_value = super::DEFAULT_PEER, env = "SPARE_PEER")]
    peer: String,
    /// Print a JSON array instead of text.
    #[arg(long)]
    json: bool,
}

fn state(s: PeerState) -> &'static str {
    match s {
        PeerState::Alive => "alive",
        PeerState::Suspect => "suspect",
        PeerState::Dead => "dead",
        PeerState::Unspecified => "unknown",
    }
}

fn reachability(r: Reachability) -> &'static str {
    match r {
        Reachability::Reachable => "reachable",
        Reachability::Unreachable => "unreachable",
        Reachability::Unspecified => "unknown",
    }
}

pub async fn run(a: PeersArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(&a.peer).await?;
    let peers = client.peers().await.map_err(|e| super::sdk_error(e, &a.peer))?;
    if a.json {
        let list: Vec<_> = peers
            .iter()
            .map(|p| {
                json!({
                    "peer_id": p.peer_id,
                    "addr": p.addr,
                    "cpus_total": p.cpus_total,
                    "cpus_free": p.cpus_free,
                    "memory_bytes": p.memory_bytes,
                    "version": p.version,
                    "state": state(p.state()),
                    "reachability": reachability(p.reachability()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!("{:<16}  {:<22}  {:>5}  {:>5}  {:<7}  reachability", "peer", "address", "cpus", "free", "state");
        for p in &peers {
            println!(
                "{:<16}  {:<22}  {:>5}  {:>5}  {:<7}  {}",
                p.peer_id.get(..16).unwrap_or(&p.peer_id),
                p.addr,
                p.cpus_total,
                p.cpus_free,
                state(p.state()),
                reachability(p.reachability())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
