//! Throwaway: honest peers banned under message loss (gap 21). Not to be committed.
use spare_protocol::sim::{run, SimConfig};

fn main() {
    println!("{:>5} {:>4} {:>13} {:>12} {:>8} {:>12}", "liars", "seed", "banned_honest", "banned_liars", "replicas", "lease_lapses");
    for liars in [0.0, 0.1] {
        for seed in 1..=3u64 {
            let mut cfg = SimConfig::new(2000);
            cfg.loss = 0.05;
            cfg.liars = liars;
            cfg.seed = seed;
            let r = run(&cfg).expect("run");
            println!(
                "{:>5} {:>4} {:>13} {:>12} {:>8.3} {:>12}  ({}, wrong {})",
                liars, seed, r.banned_honest, r.banned_liars, r.replicas_per_task, r.lease_lapses, r.job_state, r.wrong_verified
            );
        }
    }
}
