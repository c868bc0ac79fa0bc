//! Throwaway: runs one simulation and prints the report's Debug form.
//! Args: peers [crash_origin_at_ms|-] [loss] [seed] [churn] [churn_coordinators 0/1]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let peers: u32 = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let mut cfg = spare_protocol::sim::SimConfig::new(peers);
    cfg.crash_origin_at_ms = args.get(1).and_then(|a| a.parse().ok());
    if let Some(l) = args.get(2).and_then(|a| a.parse().ok()) {
        cfg.loss = l;
    }
    if let Some(s) = args.get(3).and_then(|a| a.parse().ok()) {
        cfg.seed = s;
    }
    if let Some(c) = args.get(4).and_then(|a| a.parse().ok()) {
        cfg.churn = c;
    }
    cfg.churn_coordinators = args.get(5).is_some_and(|a| a == "1");
    match spare_protocol::sim::run(&cfg) {
        Ok(r) => println!("{r:?}"),
        Err(e) => eprintln!("{e}"),
    }
}
