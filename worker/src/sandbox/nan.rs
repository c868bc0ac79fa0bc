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
//! `global.set`, or any operation the analysis does not model. The rewrite therefore
//! canonicalises, right after the operation and with the same sequence Cranelift uses
//! (`local.tee $t; const NaN; local.get $t; local.get $t; eq; select`), exactly the arithmetic
//! results from which a bit-observing use is reachable through bit-copying flows (the operand
//! stack, locals, block parameters and results, branches, `select`, `neg`/`abs`, `copysign`'s
//! magnitude). The flow analysis is per function and flow-insensitive (one node per local, per
//! block slot), so it over-approximates reachability; canonicalising an arithmetic result more
//! often than needed is still exactly today's semantics. Calls, returns and globals count as
//! observations, so every value crossing a function boundary or living in a global is already
//! today's: parameters, call results and `global.get` need no tracking. Host calls are WASI
//! preview 1, which takes no floats; the entry point `_start` takes and returns nothing.
//!
//! Hence the rewritten module run on an engine without canonicalisation gives the same bits as
//! the original on today's engine, on every architecture: no determinism rule changes, and
//! peers of the two versions agree on every task.
//!
//! # What keeps engine-wide canonicalisation
//!
//! Modules outside the feature set the analysis models (SIMD and relaxed SIMD, whose float
//! lanes would need the same per-lane treatment; exceptions, typed function references and GC,
//! which branch in ways the analysis does not follow) and functions that would exceed
//! wasmparser's limit on locals: [`plan`] says [`Plan::EngineWide`] and the sandbox compiles
//! them on an engine with Cranelift's canonicalisation, as before.

use wasm_encoder::{CodeSection, Encode, Ieee32, Ieee64, InstructionSink, RawSection};
use wasmparser::{
    BlockType, ContType, FrameKind, FunctionBody, ModuleArity, Operator, Parser, Payload, RefType, SubType,
    TypeRef, Validator, WasmFeatures,
};

/// Names the rewrite's output: part of the compiled-module cache key, bumped whenever what the
/// rewrite produces changes.
pub(crate) const REWRITE_VERSION: &str = "spare nan rewrite 1";

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

/// Where to canonicalise: after the operation that ends at byte `at`.
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

    let inserts = analyse(info, n_locals, results, body)?;
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

/// A value on the simulated stack: a node of the flow graph, or [`CLEAN`].
type Node = u32;
/// A value that is bit-for-bit today's whatever happens to it (constants, loads, call results,
/// parameters, comparisons...): never tracked.
const CLEAN: Node = u32::MAX;

/// The flow graph of one function: `into[n]` are the nodes whose bits flow into `n`.
#[derive(Default)]
struct Flow {
    into: Vec<Vec<Node>>,
    observed: Vec<bool>,
}

impl Flow {
    fn node(&mut self) -> Node {
        self.into.push(Vec::new());
        self.observed.push(false);
        (self.into.len() - 1) as Node
    }
    fn edge(&mut self, from: Node, to: Node) {
        if from != CLEAN && to != CLEAN {
            self.into[to as usize].push(from);
        }
    }
    fn observe(&mut self, n: Node) {
        if n != CLEAN {
            self.observed[n as usize] = true;
        }
    }
    /// Every node from which an observed node is reachable.
    fn close(&mut self) {
        let mut work: Vec<Node> = (0..self.into.len() as Node).filter(|&n| self.observed[n as usize]).collect();
        while let Some(n) = work.pop() {
            for i in 0..self.into[n as usize].len() {
                let m = self.into[n as usize][i];
                if !self.observed[m as usize] {
                    self.observed[m as usize] = true;
                    work.push(m);
                }
            }
        }
    }
}

struct Frame {
    kind: FrameKind,
    block: BlockType,
    /// Stack height below the block's values.
    height: usize,
    unreachable: bool,
    params: Vec<Node>,
    results: Vec<Node>,
}

impl Frame {
    /// The slots a branch to this frame fills.
    fn label(&self) -> &[Node] {
        if self.kind == FrameKind::Loop { &self.params } else { &self.results }
    }
}

/// The abstract interpretation of one function body.
struct Walk<'m> {
    info: &'m ModuleInfo,
    flow: Flow,
    stack: Vec<Node>,
    frames: Vec<Frame>,
}

impl ModuleArity for Walk<'_> {
    fn sub_type_at(&self, type_idx: u32) -> Option<&SubType> {
        self.info.types.get(type_idx as usize)
    }
    fn tag_type_arity(&self, _at: u32) -> Option<(u32, u32)> {
        None
    }
    fn type_index_of_function(&self, function_idx: u32) -> Option<u32> {
        self.info.funcs.get(function_idx as usize).copied()
    }
    fn func_type_of_cont_type(&self, _c: &ContType) -> Option<&wasmparser::FuncType> {
        None
    }
    fn sub_type_of_ref_type(&self, _rt: &RefType) -> Option<&SubType> {
        None
    }
    fn control_stack_height(&self) -> u32 {
        self.frames.len() as u32
    }
    fn label_block(&self, depth: u32) -> Option<(BlockType, FrameKind)> {
        let f = self.frames.get(self.frames.len().checked_sub(1 + depth as usize)?)?;
        Some((f.block, f.kind))
    }
}

impl Walk<'_> {
    fn frame(&self) -> Result<&Frame, String> {
        self.frames.last().ok_or_else(|| "an operator after the function's end".to_string())
    }

    fn pop(&mut self) -> Result<Node, String> {
        let f = self.frame()?;
        if self.stack.len() > f.height {
            Ok(self.stack.pop().unwrap_or(CLEAN))
        } else if f.unreachable {
            // The polymorphic stack of unreachable code: nothing real flows from it.
            Ok(CLEAN)
        } else {
            Err("operand stack underflow".into())
        }
    }

    /// `n` values, deepest first.
    fn pop_n(&mut self, n: usize) -> Result<Vec<Node>, String> {
        let mut v = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
        v.reverse();
        Ok(v)
    }

    fn label(&self, depth: u32) -> Result<Vec<Node>, String> {
        let i = self.frames.len().checked_sub(1 + depth as usize).ok_or("a branch past the function")?;
        Ok(self.frames[i].label().to_vec())
    }

    /// Pops a branch's values into the label's slots; returns them.
    fn branch(&mut self, depth: u32) -> Result<Vec<Node>, String> {
        let slots = self.label(depth)?;
        let vals = self.pop_n(slots.len())?;
        for (&v, &s) in vals.iter().zip(&slots) {
            self.flow.edge(v, s);
        }
        Ok(vals)
    }

    fn set_unreachable(&mut self) -> Result<(), String> {
        let f = self.frames.last_mut().ok_or("no frame")?;
        f.unreachable = true;
        self.stack.truncate(f.height);
        Ok(())
    }

    fn enter(&mut self, kind: FrameKind, block: BlockType) -> Result<(), String> {
        let (p, r) = self.block_type_arity(block).ok_or("a block of unknown type")?;
        let vals = self.pop_n(p as usize)?;
        let params: Vec<Node> = vals.iter().map(|_| self.flow.node()).collect();
        for (&v, &s) in vals.iter().zip(&params) {
            self.flow.edge(v, s);
        }
        let results = (0..r).map(|_| self.flow.node()).collect();
        self.frames.push(Frame { kind, block, height: self.stack.len(), unreachable: false, params, results });
        let params = self.frames.last().map(|f| f.params.clone()).unwrap_or_default();
        self.stack.extend(params);
        Ok(())
    }

    /// The block's values at its end (or `else`) flow into its results.
    fn close_arm(&mut self) -> Result<(), String> {
        let results = self.frame()?.results.clone();
        let vals = self.pop_n(results.len())?;
        for (&v, &s) in vals.iter().zip(&results) {
            self.flow.edge(v, s);
        }
        let h = self.frame()?.height;
        self.stack.truncate(h);
        Ok(())
    }

    /// Applies one operator; returns the float type of its result if it is an arithmetic one.
    fn step(&mut self, op: &Operator<'_>) -> Result<Option<(Node, Float)>, String> {
        use Operator as O;
        let arith = |w: &mut Self, pops: usize, ty: Float| -> Result<Option<(Node, Float)>, String> {
            w.pop_n(pops)?;
            let n = w.flow.node();
            w.stack.push(n);
            Ok(Some((n, ty)))
        };
        match op {
            O::F32Add | O::F32Sub | O::F32Mul | O::F32Div | O::F32Min | O::F32Max => return arith(self, 2, Float::F32),
            O::F64Add | O::F64Sub | O::F64Mul | O::F64Div | O::F64Min | O::F64Max => return arith(self, 2, Float::F64),
            O::F32Sqrt | O::F32Ceil | O::F32Floor | O::F32Trunc | O::F32Nearest | O::F32DemoteF64 => {
                return arith(self, 1, Float::F32);
            }
            O::F64Sqrt | O::F64Ceil | O::F64Floor | O::F64Trunc | O::F64Nearest | O::F64PromoteF32 => {
                return arith(self, 1, Float::F64);
            }
            // Blind to a NaN's bits: comparisons, conversions to integers.
            O::F32Eq | O::F32Ne | O::F32Lt | O::F32Gt | O::F32Le | O::F32Ge | O::F64Eq | O::F64Ne | O::F64Lt
            | O::F64Gt | O::F64Le | O::F64Ge => {
                self.pop_n(2)?;
                self.stack.push(CLEAN);
            }
            O::I32TruncF32S | O::I32TruncF32U | O::I32TruncF64S | O::I32TruncF64U | O::I64TruncF32S
            | O::I64TruncF32U | O::I64TruncF64S | O::I64TruncF64U | O::I32TruncSatF32S | O::I32TruncSatF32U
            | O::I32TruncSatF64S | O::I32TruncSatF64U | O::I64TruncSatF32S | O::I64TruncSatF32U
            | O::I64TruncSatF64S | O::I64TruncSatF64U => {
                self.pop()?;
                self.stack.push(CLEAN);
            }
            // Bit copies.
            O::F32Neg | O::F32Abs | O::F64Neg | O::F64Abs => {
                let v = self.pop()?;
                self.stack.push(v);
            }
            O::F32Copysign | O::F64Copysign => {
                let sign = self.pop()?;
                self.flow.observe(sign);
                let magnitude = self.pop()?;
                self.stack.push(magnitude);
            }
            O::LocalGet { local_index } => self.stack.push(*local_index),
            O::LocalSet { local_index } => {
                let v = self.pop()?;
                self.flow.edge(v, *local_index);
            }
            O::LocalTee { local_index } => {
                let v = self.pop()?;
                self.flow.edge(v, *local_index);
                self.stack.push(v);
            }
            O::Select | O::TypedSelect { .. } => {
                self.pop()?;
                let b = self.pop()?;
                let a = self.pop()?;
                let r = self.flow.node();
                self.flow.edge(a, r);
                self.flow.edge(b, r);
                self.stack.push(r);
            }
            O::Drop => {
                self.pop()?;
            }
            // Control.
            O::Block { blockty } => self.enter(FrameKind::Block, *blockty)?,
            O::Loop { blockty } => self.enter(FrameKind::Loop, *blockty)?,
            O::If { blockty } => {
                self.pop()?;
                self.enter(FrameKind::If, *blockty)?;
            }
            O::Else => {
                self.close_arm()?;
                let f = self.frames.last_mut().ok_or("else outside if")?;
                f.kind = FrameKind::Else;
                f.unreachable = false;
                let params = f.params.clone();
                self.stack.extend(params);
            }
            O::End => {
                self.close_arm()?;
                let f = self.frames.pop().ok_or("end outside a block")?;
                if f.kind == FrameKind::If {
                    // No else: the parameters are the results when the condition is false.
                    for (&p, &r) in f.params.iter().zip(&f.results) {
                        self.flow.edge(p, r);
                    }
                }
                self.stack.extend(f.results);
            }
            O::Br { relative_depth } => {
                self.branch(*relative_depth)?;
                self.set_unreachable()?;
            }
            O::BrIf { relative_depth } => {
                self.pop()?;
                let vals = self.branch(*relative_depth)?;
                self.stack.extend(vals);
            }
            O::BrTable { targets } => {
                self.pop()?;
                let default = self.label(targets.default())?;
                let vals = self.pop_n(default.len())?;
                for depth in targets.targets().chain(std::iter::once(Ok(targets.default()))) {
                    let slots = self.label(depth.map_err(|e| e.to_string())?)?;
                    for (&v, &s) in vals.iter().zip(&slots) {
                        self.flow.edge(v, s);
                    }
                }
                self.set_unreachable()?;
            }
            O::Return => {
                self.branch(self.frames.len().saturating_sub(1) as u32)?;
                self.set_unreachable()?;
            }
            O::Unreachable => self.set_unreachable()?,
            // Everything else (memory, globals, calls, integers, reinterpret, ...): what it pops
            // is observed, what it pushes is today's.
            other => {
                let (pops, pushes) =
                    other.operator_arity(self).ok_or_else(|| format!("an operator of unknown arity: {other:?}"))?;
                for _ in 0..pops {
                    let v = self.pop()?;
                    self.flow.observe(v);
                }
                self.stack.extend(std::iter::repeat_n(CLEAN, pushes as usize));
                if matches!(other, O::ReturnCall { .. } | O::ReturnCallIndirect { .. }) {
                    self.set_unreachable()?;
                }
            }
        }
        Ok(None)
    }
}

/// The arithmetic results of one function whose bits may be observed, in code order.
fn analyse(info: &ModuleInfo, n_locals: u64, results: u32, body: &FunctionBody<'_>) -> Result<Vec<Insert>, String> {
    let mut w = Walk { info, flow: Flow::default(), stack: Vec::new(), frames: Vec::new() };
    // Nodes 0..n_locals are the locals (parameters included), which start as today's values.
    for _ in 0..n_locals {
        w.flow.node();
    }
    // The function's results are observed by its caller.
    let returned: Vec<Node> = (0..results).map(|_| w.flow.node()).collect();
    for &r in &returned {
        w.flow.observe(r);
    }
    w.frames.push(Frame {
        kind: FrameKind::Block,
        block: BlockType::Empty,
        height: 0,
        unreachable: false,
        params: Vec::new(),
        results: returned,
    });
    let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
    let mut sources: Vec<(usize, Node, Float)> = Vec::new();
    let mut pending: Option<(Node, Float)> = None;
    while !ops.eof() {
        let (op, offset) = ops.read_with_offset().map_err(|e| e.to_string())?;
        if let Some((n, ty)) = pending.take() {
            sources.push((offset, n, ty));
        }
        pending = w.step(&op)?;
    }
    if pending.is_some() || !w.frames.is_empty() {
        return Err("a function body that does not end".into());
    }
    w.flow.close();
    Ok(sources
        .into_iter()
        .filter(|&(_, n, _)| w.flow.observed[n as usize])
        .map(|(at, _, ty)| Insert { at, ty })
        .collect())
}

#[cfg(test)]
#[path = "nan_tests.rs"]
mod tests;
