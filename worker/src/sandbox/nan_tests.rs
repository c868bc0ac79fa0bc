//! Tests of the NaN rewrite: its exact output on small modules, and that a rewritten module run
//! without engine canonicalisation stores the same bits as the original with it.

use super::{Plan, plan};
use wasmtime::{Config, Engine, Instance, Module, Store};

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}

fn rewritten(wasm: &[u8]) -> Vec<u8> {
    match plan(wasm) {
        Plan::Rewritten(b) => b,
        Plan::EngineWide(why) => panic!("expected a rewrite, got engine-wide: {why}"),
    }
}

#[test]
fn a_returned_sum_is_canonicalised_with_a_scratch_local() {
    let before = wat("(module (func (param f64 f64) (result f64) local.get 0 local.get 1 f64.add))");
    let after = wat(r#"(module (func (param f64 f64) (result f64) (local f64)
        local.get 0 local.get 1 f64.add
        local.tee 2 f64.const nan local.get 2 local.get 2 f64.eq select))"#);
    assert_eq!(rewritten(&before), after);
}

#[test]
fn floats_only_compared_are_left_alone() {
    // A mandelbrot-like loop: arithmetic results flow through locals and branches into
    // comparisons only; the only bits that leave are the integer count.
    let m = wat(r#"(module (memory 1)
        (func (param $cr f64) (param $ci f64) (result i32) (local $x f64) (local $y f64) (local $t f64) (local $i i32)
          (block $out (loop $l
            local.get $x local.get $x f64.mul local.get $y local.get $y f64.mul f64.add f64.const 4 f64.gt br_if $out
            local.get $x local.get $x f64.mul local.get $y local.get $y f64.mul f64.sub local.get $cr f64.add local.set $t
            f64.const 2 local.get $x f64.mul local.get $y f64.mul local.get $ci f64.add local.set $y
            local.get $t local.set $x
            local.get $i i32.const 1 i32.add local.tee $i i32.const 100 i32.lt_u br_if $l))
          local.get $i))"#);
    assert_eq!(rewritten(&m), m);
}

#[test]
fn the_canonicalisation_is_at_the_arithmetic_not_at_the_store() {
    // neg of an arithmetic NaN keeps its sign bit flipped today: the add is canonicalised, the
    // neg is not touched.
    let before = wat(r#"(module (memory 1) (func (param f32)
        i32.const 0 local.get 0 local.get 0 f32.sub f32.neg f32.store))"#);
    let after = wat(r#"(module (memory 1) (func (param f32) (local f32)
        i32.const 0 local.get 0 local.get 0 f32.sub
        local.tee 1 f32.const nan local.get 1 local.get 1 f32.eq select
        f32.neg f32.store))"#);
    assert_eq!(rewritten(&before), after);
    // A loaded value is stored as it is.
    let load = wat("(module (memory 1) (func i32.const 8 i32.const 0 f64.load f64.neg f64.store))");
    assert_eq!(rewritten(&load), load);
}

#[test]
fn a_loop_result_looked_at_after_the_loop_is_canonicalised_there() {
    // The multiply in the loop feeds only comparisons and the store after the loop: the store's
    // operand is canonicalised, once, and the loop is left alone.
    // (An i32 local last, so that WAT does not merge the scratch local into the f64 group.)
    let before = wat(r#"(module (memory 1) (func (param f64) (local f64 i32)
        f64.const 1 local.set 1
        (loop $l local.get 1 local.get 0 f64.mul local.tee 1 f64.const 100 f64.lt br_if $l)
        i32.const 0 local.get 1 f64.store))"#);
    let after = wat(r#"(module (memory 1) (func (param f64) (local f64 i32 f64)
        f64.const 1 local.set 1
        (loop $l local.get 1 local.get 0 f64.mul local.tee 1 f64.const 100 f64.lt br_if $l)
        i32.const 0 local.get 1
        local.tee 3 f64.const nan local.get 3 local.get 3 f64.eq select
        f64.store))"#);
    assert_eq!(rewritten(&before), after);
    // When the stored value may also be the (opaque) parameter, the store cannot canonicalise
    // (the parameter's payload must survive): the multiply is canonicalised where it is made.
    let mixed = wat(r#"(module (memory 1) (func (param f64) (local f64 i32)
        (loop $l local.get 1 local.get 0 f64.mul local.tee 1 f64.const 100 f64.lt br_if $l)
        i32.const 0 local.get 1 local.get 0 local.get 2 select f64.store))"#);
    let after = wat(r#"(module (memory 1) (func (param f64) (local f64 i32 f64)
        (loop $l local.get 1 local.get 0 f64.mul
          local.tee 3 f64.const nan local.get 3 local.get 3 f64.eq select
          local.tee 1 f64.const 100 f64.lt br_if $l)
        i32.const 0 local.get 1 local.get 0 local.get 2 select f64.store))"#);
    assert_eq!(rewritten(&mixed), after);
}

#[test]
fn a_reused_local_does_not_spread_an_observation() {
    // Local 1 holds a loop's sums, then (reused) a loaded value that is stored: the loaded
    // value is opaque, but the loop's sums never reach the store.
    let m = wat(r#"(module (memory 1) (func (param f64) (result i32) (local f64)
        (loop $l local.get 1 local.get 0 f64.add local.tee 1 f64.const 100 f64.lt br_if $l)
        i32.const 8 f64.load local.set 1
        i32.const 0 local.get 1 f64.store
        i32.const 0))"#);
    assert_eq!(rewritten(&m), m);
}

#[test]
fn simd_modules_keep_engine_wide_canonicalisation() {
    let m = wat(r#"(module (memory 1) (func
        i32.const 0 i32.const 0 v128.load i32.const 16 v128.load f32x4.add v128.store))"#);
    assert!(matches!(plan(&m), Plan::EngineWide(_)));
}

/// A module that computes NaNs every way we know and stores their bits from offset 0, 8 bytes
/// each (f32s in the low half). Exported `run`, memory `m`.
const NAN_ZOO: &str = r#"(module
  (memory (export "m") 1)
  (global $g (mut f64) (f64.const 0))
  (func $pass (param f64) (result f64) local.get 0)
  (func $div (param f64 f64) (result f64) local.get 0 local.get 1 f64.div)
  (func $zero (result f64) f64.const 0)
  (func (export "run") (local $n f64) (local $p f64) (local $i i32)
    ;; operands hidden behind a call, so that nothing is folded at compile time
    call $zero call $zero f64.div local.set $n
    ;; a NaN with a payload and the sign bit, by bits
    i64.const 0xfff4000000000001 f64.reinterpret_i64 local.set $p
    i32.const 0 local.get $n f64.store
    i32.const 8 local.get $n f64.neg f64.store
    i32.const 16 local.get $n f64.neg f64.abs f64.store
    i32.const 24 f64.const 1 local.get $n f64.copysign f64.store
    i32.const 32 local.get $p f64.neg f64.store
    i32.const 40 local.get $p f64.const 0 f64.add f64.store
    i32.const 48 local.get $p f32.demote_f64 f32.store
    i32.const 56 f64.const -1 call $pass f64.sqrt f64.store
    i32.const 64 local.get $p f64.const 1 f64.min f64.store
    i32.const 72 f64.const 0 f64.const 0 call $div f64.store
    i32.const 80 local.get $n local.get $p i32.const 1 select f64.store
    i32.const 88 (block (result f64) local.get $n f64.const 1 f64.mul f64.neg) f64.store
    i32.const 96 local.get $n f64.const 2 f64.mul call $pass f64.store
    local.get $n f64.const 3 f64.sub global.set $g
    i32.const 104 global.get $g f64.neg f64.store
    i32.const 112 local.get $n f64.ceil i64.reinterpret_f64 i64.store
    i32.const 120 local.get $n f32.demote_f64 f32.neg f32.store
    ;; through a loop parameter and a branch
    i32.const 128
    f64.const 0 local.get $n f64.div
    (loop $l (param f64) (result f64)
      f64.neg
      local.get $i i32.const 1 i32.add local.tee $i i32.const 3 i32.lt_u br_if $l)
    f64.store
    ;; made in a loop, stored after it; merged with an opaque payload NaN; a reused local
    i32.const 144
    (loop $m (result f64)
      local.get $n f64.const 1 f64.add local.set $n
      local.get $i i32.const 1 i32.add local.tee $i i32.const 6 i32.lt_u br_if $m
      local.get $n)
    f64.store
    i32.const 152 (if (result f64) (i32.eq (local.get $i) (i32.const 6)) (then local.get $p) (else local.get $n f64.neg)) f64.store
    i32.const 160 (if (result f64) (i32.eq (local.get $i) (i32.const 6)) (then local.get $n f64.const 1 f64.mul) (else local.get $p)) f64.store
    local.get $p local.set $n
    i32.const 168 local.get $n f64.store
    i32.const 176 local.get $n f64.const 1 f64.mul f32.demote_f64 i32.reinterpret_f32 i32.store
    ;; a NaN only compared: its result is an integer
    i32.const 184 local.get $n local.get $n f64.add local.get $n f64.eq i64.extend_i32_u i64.store))"#;

fn memory_after_run(wasm: &[u8], canonicalise: bool) -> Vec<u8> {
    memory_after_run_at(wasm, canonicalise, 0..192)
}

fn memory_after_run_at(wasm: &[u8], canonicalise: bool, range: std::ops::Range<usize>) -> Vec<u8> {
    let mut config = Config::new();
    config.cranelift_nan_canonicalization(canonicalise);
    let engine = Engine::new(&config).expect("engine");
    let module = Module::new(&engine, wasm).expect("compile");
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).expect("instantiate");
    let run = instance.get_typed_func::<(), ()>(&mut store, "run").expect("run");
    run.call(&mut store, ()).expect("runs");
    let memory = instance.get_memory(&mut store, "m").expect("memory");
    memory.data(&store)[range].to_vec()
}

#[test]
fn rewritten_without_engine_canonicalisation_stores_todays_bits() {
    let original = wat(NAN_ZOO);
    let today = memory_after_run(&original, true);
    let rewritten = rewritten(&original);
    assert_ne!(rewritten, original);
    assert_eq!(memory_after_run(&rewritten, false), today);
    // The bits that a store-side canonicalisation would have changed are today's exactly.
    let at = |i: usize| u64::from_le_bytes(today[i..i + 8].try_into().expect("8 bytes"));
    assert_eq!(at(0), 0x7ff8_0000_0000_0000, "arithmetic NaN: canonical");
    assert_eq!(at(8), 0xfff8_0000_0000_0000, "its negation keeps the sign bit");
    assert_eq!(at(24), 1f64.to_bits(), "copysign from a canonical NaN");
    assert_eq!(at(32), 0x7ff4_0000_0000_0001, "a loaded NaN's payload survives neg");
    assert_eq!(at(40), 0x7ff8_0000_0000_0000, "arithmetic on it is canonical");
    // x86 makes negative default NaNs: without any canonicalisation the bits differ, which is
    // what the rewrite is there for.
    if cfg!(target_arch = "x86_64") {
        assert_ne!(memory_after_run(&original, false), today);
    }
}


/// A small deterministic generator (xorshift) of float programs, for the differential test.
struct Gen(u64);

impl Gen {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn local(&mut self) -> &'static str {
        ["$a", "$b", "$c", "$d"][self.below(4) as usize]
    }

    /// An f64 expression: loads of NaNs with payloads, constants, locals, and every float
    /// operation the rewrite tells apart.
    fn expr(&mut self, depth: u32) -> String {
        if depth == 0 || self.below(4) == 0 {
            return match self.below(4) {
                0 => format!("(local.get {})", self.local()),
                1 => format!("(f64.load (i32.const {}))", 8 * self.below(4)),
                2 => ["(f64.const 0)", "(f64.const -1)", "(f64.const inf)", "(f64.const 1.5)"][self.below(4) as usize].into(),
                _ => "(f64.div (f64.const 0) (local.get $a))".into(),
            };
        }
        let d = depth - 1;
        match self.below(11) {
            0..=3 => {
                let op = ["add", "sub", "mul", "div", "min", "max"][self.below(6) as usize];
                format!("(f64.{op} {} {})", self.expr(d), self.expr(d))
            }
            4 | 5 => {
                let op = ["neg", "abs", "sqrt", "ceil", "nearest"][self.below(5) as usize];
                format!("(f64.{op} {})", self.expr(d))
            }
            6 => format!("(f64.copysign {} {})", self.expr(d), self.expr(d)),
            7 => format!("(select {} {} (f64.lt {} {}))", self.expr(d), self.expr(d), self.expr(d), self.expr(d)),
            8 => format!("(f64.promote_f32 (f32.demote_f64 {}))", self.expr(d)),
            9 => format!("(block (result f64) {} (br_if 0 (f64.ne {} {})) (drop) {})", self.expr(d), self.expr(d), self.expr(d), self.expr(d)),
            _ => format!("(local.tee {} {})", self.local(), self.expr(d)),
        }
    }

    fn program(&mut self) -> String {
        let mut body = String::new();
        let mut out = 1024;
        for _ in 0..24 {
            let stmt = match self.below(6) {
                0 | 1 => format!("(local.set {} {})", self.local(), self.expr(3)),
                2 => format!("(f64.store (i32.const {out}) {})", self.expr(3)),
                3 => format!("(i64.store (i32.const {out}) (i64.reinterpret_f64 {}))", self.expr(3)),
                4 => format!("(if (f64.lt {} {}) (then (local.set {} {})))", self.expr(2), self.expr(2), self.local(), self.expr(2)),
                _ => format!(
                    "(local.set $i (i32.const 0)) (loop $l (local.set {} {}) (local.set $i (i32.add (local.get $i) (i32.const 1))) (br_if $l (i32.lt_u (local.get $i) (i32.const 3))))",
                    self.local(),
                    self.expr(2)
                ),
            };
            body.push_str(&stmt);
            body.push('\n');
            out += 8;
        }
        for l in ["$a", "$b", "$c", "$d"] {
            body.push_str(&format!("(f64.store (i32.const {out}) (local.get {l}))\n"));
            out += 8;
        }
        format!(
            r#"(module (memory (export "m") 1)
              (data (i32.const 0) "\01\00\00\00\00\00\f4\7f" "\00\00\00\00\00\00\f8\ff" "\05\00\00\00\00\00\f0\ff" "\00\00\00\00\00\00\f0\3f")
              (func (export "run") (local $a f64) (local $b f64) (local $c f64) (local $d f64) (local $i i32)
                (local.set $b (f64.load (i32.const 0)))
                {body}))"#
        )
    }
}

#[test]
fn generated_float_programs_store_todays_bits_when_rewritten() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut differs_without = 0;
    for case in 0..200 {
        let text = g.program();
        let original = wat(&text);
        let today = memory_after_run_at(&original, true, 1024..1280);
        let got = memory_after_run_at(&rewritten(&original), false, 1024..1280);
        assert_eq!(got, today, "case {case}:\n{text}");
        if memory_after_run_at(&original, false, 1024..1280) != today {
            differs_without += 1;
        }
    }
    // On x86 (negative default NaNs) most programs differ without any canonicalisation: the
    // programs do exercise what the rewrite is for.
    if cfg!(target_arch = "x86_64") {
        assert!(differs_without > 10, "only {differs_without} programs depend on canonicalisation");
    }
}
