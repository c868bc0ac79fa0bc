//! NaN canonicalisation by rewriting a module before it is compiled: only the float results
//! whose bits can be observed are canonicalised, so that code whose floats never reach memory
//! or an integer runs without Cranelift's per-operation canonicalisation.
//!
//! # What must stay the same
//!
//! Today's semantics (an engine with `cranelift_nan_canonicalization(true)`, the one every peer
//! of an earlier version runs): the result of every float *arithmetic* operation (`add sub mul
//! div min max sqrt ceil floor trunc nearest demote promote`; Cranelift's list in wasmtime 48,
//! `cranelift-codegen` 0.135 `nan_canonicalization.rs`, no calls) is replaced by the canonical
//! NaN (`0x7fc00000`, `0x7ff8000000000000`) when it is a NaN. Every other operation moves bits
//! exactly: `load store local.* global.* select neg abs copysign reinterpret`, calls, branches.
//! So a NaN loaded from memory, or an arithmetic NaN then negated, keeps its exact bits today,
//! and canonicalising at the store instead would change them: the rewrite does not do that.
//!
//! # The rewrite, and why it is exactly equivalent
//!
//! Without engine canonicalisation, the only values that can differ from today's are the NaN
//! results of arithmetic operations (their sign and payload depend on the CPU: x86 makes
//! negative default NaNs, ARM positive ones), and values bit-copied from them. Non-NaN results
//! are IEEE-exact either way. Whether an arithmetic result *is* a NaN never depends on the
//! payload of a NaN operand; nor do comparisons (any NaN compares unordered), nor float-to-int
//! conversions (every NaN traps, or gives 0 when saturating). So a differing value is harmless
//! unless its bits reach a *bit-observing* use: a store, a reinterpret, the sign operand of
//! `copysign` (its sign bit becomes a non-NaN result's sign), a call argument, a returned value,
//! `global.set`, or any operation the analysis does not model. Calls, returns and globals count
//! as observations, so every value crossing a function boundary or living in a global is
//! already today's: parameters, call results and `global.get` need no tracking. Host calls are
//! WASI preview 1, which takes no floats; the entry point `_start` takes and returns nothing.
//!
//! A per-function flow analysis (`nan_flow.rs`: the operand stack, each local's definitions
//! through the control flow, block parameters and results, branches, `select`, `neg`/`abs`,
//! `copysign`'s magnitude) finds, for each observation, the values that can reach it, and
//! canonicalises with Cranelift's own sequence (`local.tee $t; const NaN; local.get $t;
//! local.get $t; eq; select`, one scratch local per float type):
//!
//! - *at the observation* when the observed value is on top of the stack and can only be an
//!   arithmetic result or a non-NaN, bit-copied without a sign change: canonicalising a copy is
//!   canonicalising the result, and canonicalising a non-NaN changes nothing (so a loop whose
//!   result is only looked at after it runs without any canonicalisation);
//! - otherwise *right after every arithmetic operation whose result can reach it*: exactly what
//!   the engine did, for those operations (a loaded or passed-in value may be a NaN whose
//!   payload must be kept, and a sign change after the operation must apply to the canonical
//!   NaN, so neither can be canonicalised at the observation).
//!
//! The analysis over-approximates what can reach what (it merges paths and does not evaluate
//! conditions); canonicalising more often than needed is still exactly today's semantics.
//!
//! Hence the rewritten module run on an engine without canonicalisation gives the same bits as
//! the original on today's engine, on every architecture: no determinism rule changes, and
//! peers of the two versions agree on every task.
//!
//! # What keeps engine-wide canonicalisation
//!
//! Modules outside the feature set the analysis models (SIMD and relaxed SIMD, whose float
//! lanes would need the same per-lane treatment; exceptions, typed function references and GC,
//! which branch in ways the analysis does not follow), and functions past wasmparser's limit
//! on locals or the analysis' bounds on its graph: [`plan`] says [`Plan::EngineWide`] and the
//! sandbox compiles them on an engine with Cranelift's canonicalisation, as before.

use wasm_encoder::{CodeSection, Encode, Ieee32, Ieee64, InstructionSink, RawSection};
use wasmparser::{FunctionBody, Parser, Payload, SubType, TypeRef, Validator, WasmFeatures};

#[path = "nan_flow.rs"]
mod flow;

/// Names the rewrite's output: part of the compiled-module cache key, bumped whenever what the
/// rewrite produces changes.
pub(crate) const REWRITE_VERSION: &str = "spare nan rewrite 2";

/// wasmparser's limit on a function's locals (the scratch locals must fit under it).
const MAX_LOCALS: u64 = 50_000;
/// The canonical NaNs (what Cranelift's `Ieee32::NAN` and `Ieee64::NAN` are).
const CANONICAL_F32: u32 = 0x7fc0_0000;
const CANONICAL_F64: u64 = 0x7ff8_0000_0000_0000;

/// How a module's NaNs are made deterministic.
#[derive(Debug)]
pub(crate) enum Plan {
    /// These bytes (the rewritten module), compiled without engine canonicalisation.
    Rewritten(Vec<u8>),
    /// The module as it is, compiled with engine canonicalisation (why, for logs).
    EngineWide(String),
}

/// Plans a module that the engine already validated.
pub(crate) fn plan(wasm: &[u8]) -> Plan {
    match rewrite(wasm) {
        Ok(bytes) => Plan::Rewritten(bytes),
        Err(why) => Plan::EngineWide(why),
    }
}

/// The features the analysis models: WebAssembly 2.0 without SIMD, plus tail calls and
/// extended constants (no new kind of branch).
fn modelled_features() -> WasmFeatures {
    WasmFeatures::WASM2.difference(WasmFeatures::SIMD) | WasmFeatures::TAIL_CALL | WasmFeatures::EXTENDED_CONST
}

/// What the analysis needs of the module.
#[derive(Default)]
struct ModuleInfo {
    types: Vec<SubType>,
    /// Type index of each function index (imports first).
    funcs: Vec<u32>,
}

fn rewrite(wasm: &[u8]) -> Result<Vec<u8>, String> {
    Validator::new_with_features(modelled_features())
        .validate_all(wasm)
        .map_err(|e| format!("outside the rewrite's feature set: {e}"))?;
    let err = |e: wasmparser::BinaryReaderError| e.to_string();
    let mut info = ModuleInfo::default();
    let mut imported = 0usize;
    let mut out = wasm_encoder::Module::new();
    let mut code = CodeSection::new();
    let mut bodies_left = 0u32;
    let mut body_index = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(err)?;
        let section = payload.as_section();
        match payload {
            Payload::TypeSection(r) => {
                for group in r {
                    info.types.extend(group.map_err(err)?.into_types());
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    if let TypeRef::Func(t) | TypeRef::FuncExact(t) = imp.map_err(err)?.ty {
                        info.funcs.push(t);
                        imported += 1;
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    info.funcs.push(t.map_err(err)?);
                }
            }
            Payload::CodeSectionStart { count, .. } => {
                bodies_left = count;
                if count == 0 {
                    out.section(&code);
                }
                continue;
            }
            Payload::CodeSectionEntry(body) => {
                let ty = *info.funcs.get(imported + body_index).ok_or("a body without a function")?;
                body_index += 1;
                code.raw(&rewrite_body(&info, ty, &body, wasm)?);
                bodies_left = bodies_left.saturating_sub(1);
                if bodies_left == 0 {
                    out.section(&code);
                }
                continue;
            }
            _ => {}
        }
        if let Some((id, range)) = section {
            out.section(&RawSection { id, data: &wasm[range] });
        }
    }
    Ok(out.finish())
}

/// Scalar float type of an arithmetic result.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Float {
    F32,
    F64,
}

/// Where to canonicalise the value on top of the stack: before the operation at byte `at`.
struct Insert {
    at: usize,
    ty: Float,
}

/// One function body, with the canonicalising sequences inserted (the body's bytes, without
/// its size prefix).
fn rewrite_body(info: &ModuleInfo, ty: u32, body: &FunctionBody<'_>, wasm: &[u8]) -> Result<Vec<u8>, String> {
    let err = |e: wasmparser::BinaryReaderError| e.to_string();
    let (params, results) = info.func_arity(ty).ok_or("a function without a function type")?;
    let mut locals = body.get_locals_reader().map_err(err)?;
    let groups = locals.get_count();
    let decl_start = locals.original_position();
    let mut n_locals = u64::from(params);
    for _ in 0..groups {
        n_locals += u64::from(locals.read().map_err(err)?.0);
    }
    let ops_start = locals.original_position();

    let inserts = flow::analyse(info, params, n_locals - u64::from(params), results, body)?;
    if inserts.is_empty() {
        return Ok(wasm[body.range()].to_vec());
    }
    let need32 = inserts.iter().any(|i| i.ty == Float::F32);
    let need64 = inserts.iter().any(|i| i.ty == Float::F64);
    let extra = u32::from(need32) + u32::from(need64);
    if n_locals + u64::from(extra) > MAX_LOCALS {
        return Err(format!("a function with {n_locals} locals has no room for scratch locals"));
    }
    // n_locals < MAX_LOCALS here, so these fit.
    let t32 = n_locals as u32;
    let t64 = t32 + u32::from(need32);

    let mut out = Vec::with_capacity(body.range().len() + inserts.len() * 16);
    (groups + extra).encode(&mut out);
    out.extend_from_slice(&wasm[decl_start..ops_start]);
    if need32 {
        1u32.encode(&mut out);
        wasm_encoder::ValType::F32.encode(&mut out);
    }
    if need64 {
        1u32.encode(&mut out);
        wasm_encoder::ValType::F64.encode(&mut out);
    }
    let mut pos = ops_start;
    for ins in &inserts {
        out.extend_from_slice(&wasm[pos..ins.at]);
        pos = ins.at;
        let mut sink = InstructionSink::new(&mut out);
        // select picks $t when $t == $t, i.e. when it is not a NaN.
        match ins.ty {
            Float::F32 => {
                sink.local_tee(t32).f32_const(Ieee32::new(CANONICAL_F32)).local_get(t32).local_get(t32).f32_eq();
            }
            Float::F64 => {
                sink.local_tee(t64).f64_const(Ieee64::new(CANONICAL_F64)).local_get(t64).local_get(t64).f64_eq();
            }
        }
        sink.select();
    }
    out.extend_from_slice(&wasm[pos..body.range().end]);
    Ok(out)
}

impl ModuleInfo {
    fn func_arity(&self, ty: u32) -> Option<(u32, u32)> {
        match &self.types.get(ty as usize)?.composite_type.inner {
            wasmparser::CompositeInnerType::Func(f) => Some((f.params().len() as u32, f.results().len() as u32)),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "nan_tests.rs"]
mod tests;
