//! The `empty` task as a WASI preview 1 command: reads nothing, writes nothing, exits 0.
//! It measures the fixed cost of running one task (instantiation, WASI set-up, exit).

fn main() {}
