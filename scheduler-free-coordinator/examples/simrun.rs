// TEMPORARY: never commit.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let peers: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let mut cfg = spare_protocol::sim::SimConfig::new(peers);
    match args.get(2).map(String::as_str) {
        Some("mixed") => { cfg.liars = 0.1; cfg.churn = 0.1; cfg.loss = 0.01; }
        Some("crash") => { cfg.crash_origin_at_ms = Some(2_000); }
        _ => {}
    }
    let t = std::time::Instant::now();
    let r = spare_protocol::sim::run(&cfg).expect("sim");
    eprintln!("wall {:?}", t.elapsed());
    println!("{}", r.table());
}
