//! The flow analysis behind the NaN rewrite: which float arithmetic results of a function can
//! reach an observation of their bits, and where to canonicalise them.
//!
//! One abstract interpretation of the body builds a graph of values: a node per arithmetic
//! result (a *source*), per `select`, `neg`/`abs`/`copysign` result, block parameter and
//! result, and per local at every merge (block ends, loop heads: the analysis follows each
//! local's definitions through the control flow, since compilers reuse a local for unrelated
//! values); an edge where bits are copied, marked when `neg`/`abs`/`copysign` change a sign bit
//! on the way. Two fixed nodes stand for values that are today's bits whatever happens
//! ([`OPAQUE`]: parameters, loads, call results, globals) and for values that cannot be NaNs
//! ([`NON_NAN`]: non-NaN constants, integer conversions, zeroed locals).
//!
//! An observation (store, `reinterpret`, `copysign`'s sign, and every operand of an operation
//! not modelled) is canonicalised one of two ways, both giving today's bits:
//!
//! - *at the observation*, just before the operation, when the observed operand is on top of
//!   the stack, its type is known, and every value that can reach it is a source or a non-NaN,
//!   copied without a sign change: canonicalising a copy of a result is canonicalising the
//!   result, and canonicalising a non-NaN changes nothing. This keeps the canonicalisation out
//!   of a loop whose result is only looked at after it;
//! - otherwise *at every source that can reach it*, right after the operation (an opaque value
//!   could be a NaN with a payload that must be kept, and a sign change after a source must
//!   apply to the canonical NaN).

use wasmparser::{BlockType, ContType, FrameKind, FunctionBody, ModuleArity, Operator, RefType, SubType};

use super::{Float, Insert, ModuleInfo};

/// A node of the value graph.
type Node = u32;
/// Today's bits whatever happens to them, and possibly a NaN with any payload.
const OPAQUE: Node = 0;
/// Cannot be a NaN.
const NON_NAN: Node = 1;
/// Most nodes and edges a function's graph may have; beyond them the module keeps engine-wide
/// canonicalisation (the analysis must stay cheap for any module a stranger submits).
const MAX_GRAPH: usize = 1 << 20;

/// The value graph of one function.
struct Flow {
    nodes: u32,
    /// `(from, to, sign_change)`.
    edges: Vec<(Node, Node, bool)>,
    /// Arithmetic results: node, the byte offset after the operation, type.
    sources: Vec<(Node, usize, Float)>,
    /// Observations: node, and where to canonicalise it in place (offset of the observing
    /// operation, type) when it is the top operand of a known float type.
    sinks: Vec<(Node, Option<(usize, Float)>)>,
}

impl Flow {
    fn node(&mut self) -> Result<Node, String> {
        if self.nodes as usize >= MAX_GRAPH {
            return Err("a function too large for the NaN analysis".into());
        }
        self.nodes += 1;
        Ok(self.nodes - 1)
    }
    fn edge(&mut self, from: Node, to: Node, sign_change: bool) -> Result<(), String> {
        if from == to {
            return Ok(());
        }
        if self.edges.len() >= MAX_GRAPH {
            return Err("a function too large for the NaN analysis".into());
        }
        self.edges.push((from, to, sign_change));
        Ok(())
    }

    /// Nodes reachable from `start` along the edges (forward or backward).
    fn reach(&self, start: impl Iterator<Item = Node>, forward: bool) -> Vec<bool> {
        let n = self.nodes as usize;
        // Adjacency in compressed rows.
        let mut first = vec![0u32; n + 1];
        for &(a, b, _) in &self.edges {
            let k = if forward { a } else { b };
            first[k as usize + 1] += 1;
        }
        for i in 0..n {
            first[i + 1] += first[i];
        }
        let mut fill = first.clone();
        let mut next = vec![0u32; self.edges.len()];
        for &(a, b, _) in &self.edges {
            let (k, v) = if forward { (a, b) } else { (b, a) };
            next[fill[k as usize] as usize] = v;
            fill[k as usize] += 1;
        }
        let mut seen = vec![false; n];
        let mut work: Vec<Node> = Vec::new();
        for s in start {
            if !seen[s as usize] {
                seen[s as usize] = true;
                work.push(s);
            }
        }
        while let Some(k) = work.pop() {
            for &v in &next[first[k as usize] as usize..first[k as usize + 1] as usize] {
                if !seen[v as usize] {
                    seen[v as usize] = true;
                    work.push(v);
                }
            }
        }
        seen
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
    /// The locals where the block was entered (an `if`'s other arm starts from them).
    entry: Vec<Node>,
    /// A loop's locals at its head (branches to the loop flow into them).
    head: Vec<Node>,
    /// The locals of every path that reaches the block's end by a branch or the `then` arm.
    incoming: Vec<Vec<Node>>,
}

/// The abstract interpretation of one function body.
struct Walk<'m> {
    info: &'m ModuleInfo,
    flow: Flow,
    stack: Vec<Node>,
    locals: Vec<Node>,
    frames: Vec<Frame>,
    /// Work spent on merges (locals times paths), bounded like the graph.
    merge_work: usize,
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
            Ok(self.stack.pop().unwrap_or(OPAQUE))
        } else if f.unreachable {
            // The polymorphic stack of unreachable code: nothing real flows from it.
            Ok(NON_NAN)
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

    fn push_new(&mut self) -> Result<Node, String> {
        let n = self.flow.node()?;
        self.stack.push(n);
        Ok(n)
    }

    fn copy_into(&mut self, vals: &[Node], slots: &[Node]) -> Result<(), String> {
        for (&v, &s) in vals.iter().zip(slots) {
            self.flow.edge(v, s, false)?;
        }
        Ok(())
    }

    fn target(&self, depth: u32) -> Result<usize, String> {
        self.frames.len().checked_sub(1 + depth as usize).ok_or_else(|| "a branch past the function".to_string())
    }

    /// A branch to `depth` with `vals`: they flow into the label's slots, the locals into the
    /// loop's head or the block's end.
    fn branch_with(&mut self, depth: u32, vals: &[Node]) -> Result<(), String> {
        let i = self.target(depth)?;
        if self.frames[i].kind == FrameKind::Loop {
            let (slots, head) = (self.frames[i].params.clone(), self.frames[i].head.clone());
            self.copy_into(vals, &slots)?;
            let locals = self.locals.clone();
            self.copy_into(&locals, &head)?;
        } else {
            let slots = self.frames[i].results.clone();
            self.copy_into(vals, &slots)?;
            if i > 0 {
                self.count_merge()?;
                let locals = self.locals.clone();
                self.frames[i].incoming.push(locals);
            }
        }
        Ok(())
    }

    fn label_arity(&self, depth: u32) -> Result<usize, String> {
        let f = &self.frames[self.target(depth)?];
        Ok(if f.kind == FrameKind::Loop { f.params.len() } else { f.results.len() })
    }

    fn count_merge(&mut self) -> Result<(), String> {
        self.merge_work = self.merge_work.saturating_add(self.locals.len().max(1));
        if self.merge_work > MAX_GRAPH {
            return Err("a function too large for the NaN analysis".into());
        }
        Ok(())
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
        let params = (0..p).map(|_| self.flow.node()).collect::<Result<Vec<_>, _>>()?;
        self.copy_into(&vals, &params)?;
        let results = (0..r).map(|_| self.flow.node()).collect::<Result<Vec<_>, _>>()?;
        let mut head = Vec::new();
        if kind == FrameKind::Loop {
            self.count_merge()?;
            for i in 0..self.locals.len() {
                let phi = self.flow.node()?;
                self.flow.edge(self.locals[i], phi, false)?;
                self.locals[i] = phi;
                head.push(phi);
            }
        }
        let entry = if kind == FrameKind::If { self.locals.clone() } else { Vec::new() };
        self.frames.push(Frame {
            kind,
            block,
            height: self.stack.len(),
            unreachable: false,
            params: params.clone(),
            results,
            entry,
            head,
            incoming: Vec::new(),
        });
        self.stack.extend(params);
        Ok(())
    }

    /// The arm's values at its end (or `else`) flow into the block's results.
    fn close_arm(&mut self) -> Result<(), String> {
        let results = self.frame()?.results.clone();
        let vals = self.pop_n(results.len())?;
        self.copy_into(&vals, &results)?;
        let h = self.frame()?.height;
        self.stack.truncate(h);
        Ok(())
    }

    /// The locals after a merge of `paths`: each local's node when all paths agree, else a
    /// new node fed by each.
    fn merge(&mut self, paths: Vec<Vec<Node>>) -> Result<(), String> {
        let Some(first) = paths.first() else { return Ok(()) };
        let mut merged = first.clone();
        for (i, m) in merged.iter_mut().enumerate() {
            if paths.iter().all(|p| p[i] == *m) {
                continue;
            }
            let phi = self.flow.node()?;
            for p in &paths {
                self.flow.edge(p[i], phi, false)?;
            }
            *m = phi;
        }
        self.locals = merged;
        Ok(())
    }

    /// Applies one operator at byte `offset`; `next` is the offset after it.
    fn step(&mut self, op: &Operator<'_>, offset: usize, next: usize) -> Result<(), String> {
        use Operator as O;
        let source = |w: &mut Self, pops: usize, ty: Float| -> Result<(), String> {
            w.pop_n(pops)?;
            let n = w.push_new()?;
            w.flow.sources.push((n, next, ty));
            Ok(())
        };
        match op {
            O::F32Add | O::F32Sub | O::F32Mul | O::F32Div | O::F32Min | O::F32Max => source(self, 2, Float::F32)?,
            O::F64Add | O::F64Sub | O::F64Mul | O::F64Div | O::F64Min | O::F64Max => source(self, 2, Float::F64)?,
            O::F32Sqrt | O::F32Ceil | O::F32Floor | O::F32Trunc | O::F32Nearest | O::F32DemoteF64 => {
                source(self, 1, Float::F32)?
            }
            O::F64Sqrt | O::F64Ceil | O::F64Floor | O::F64Trunc | O::F64Nearest | O::F64PromoteF32 => {
                source(self, 1, Float::F64)?
            }
            // Blind to a NaN's bits: comparisons, conversions to integers; and conversions
            // from integers, which make no NaN.
            O::F32Eq | O::F32Ne | O::F32Lt | O::F32Gt | O::F32Le | O::F32Ge | O::F64Eq | O::F64Ne | O::F64Lt
            | O::F64Gt | O::F64Le | O::F64Ge => {
                self.pop_n(2)?;
                self.stack.push(NON_NAN);
            }
            O::I32TruncF32S | O::I32TruncF32U | O::I32TruncF64S | O::I32TruncF64U | O::I64TruncF32S
            | O::I64TruncF32U | O::I64TruncF64S | O::I64TruncF64U | O::I32TruncSatF32S | O::I32TruncSatF32U
            | O::I32TruncSatF64S | O::I32TruncSatF64U | O::I64TruncSatF32S | O::I64TruncSatF32U
            | O::I64TruncSatF64S | O::I64TruncSatF64U | O::F32ConvertI32S | O::F32ConvertI32U
            | O::F32ConvertI64S | O::F32ConvertI64U | O::F64ConvertI32S | O::F64ConvertI32U
            | O::F64ConvertI64S | O::F64ConvertI64U => {
                self.pop()?;
                self.stack.push(NON_NAN);
            }
            O::I32Const { .. } | O::I64Const { .. } => self.stack.push(NON_NAN),
            O::F32Const { value } => {
                self.stack.push(if f32::from_bits(value.bits()).is_nan() { OPAQUE } else { NON_NAN })
            }
            O::F64Const { value } => {
                self.stack.push(if f64::from_bits(value.bits()).is_nan() { OPAQUE } else { NON_NAN })
            }
            // Bit copies, with a sign change.
            O::F32Neg | O::F32Abs | O::F64Neg | O::F64Abs => {
                let v = self.pop()?;
                let r = self.push_new()?;
                self.flow.edge(v, r, true)?;
            }
            O::F32Copysign | O::F64Copysign => {
                let ty = if matches!(op, O::F32Copysign) { Float::F32 } else { Float::F64 };
                let sign = self.pop()?;
                self.flow.sinks.push((sign, Some((offset, ty))));
                let magnitude = self.pop()?;
                let r = self.push_new()?;
                self.flow.edge(magnitude, r, true)?;
            }
            // Observations of a float on top of the stack.
            O::F32Store { .. } | O::I32ReinterpretF32 | O::F64Store { .. } | O::I64ReinterpretF64 => {
                let ty = if matches!(op, O::F32Store { .. } | O::I32ReinterpretF32) { Float::F32 } else { Float::F64 };
                let v = self.pop()?;
                self.flow.sinks.push((v, Some((offset, ty))));
                if matches!(op, O::F32Store { .. } | O::F64Store { .. }) {
                    self.pop()?;
                } else {
                    self.stack.push(NON_NAN);
                }
            }
            O::LocalGet { local_index } => {
                let v = *self.locals.get(*local_index as usize).ok_or("no such local")?;
                self.stack.push(v);
            }
            O::LocalSet { local_index } | O::LocalTee { local_index } => {
                let v = self.pop()?;
                *self.locals.get_mut(*local_index as usize).ok_or("no such local")? = v;
                if matches!(op, O::LocalTee { .. }) {
                    self.stack.push(v);
                }
            }
            O::Select | O::TypedSelect { .. } => {
                self.pop()?;
                let b = self.pop()?;
                let a = self.pop()?;
                let r = self.push_new()?;
                self.flow.edge(a, r, false)?;
                self.flow.edge(b, r, false)?;
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
                let locals = self.locals.clone();
                let f = self.frames.last_mut().ok_or("else outside if")?;
                if !f.unreachable {
                    f.incoming.push(locals);
                }
                f.kind = FrameKind::Else;
                f.unreachable = false;
                self.locals = std::mem::take(&mut f.entry);
                let params = f.params.clone();
                self.stack.extend(params);
            }
            O::End => {
                self.close_arm()?;
                let f = self.frames.pop().ok_or("end outside a block")?;
                if f.kind == FrameKind::If {
                    // No else: the parameters are the results when the condition is false.
                    self.copy_into(&f.params, &f.results)?;
                }
                if f.kind != FrameKind::Loop && !self.frames.is_empty() {
                    let mut paths = f.incoming;
                    if !f.unreachable {
                        paths.push(self.locals.clone());
                    }
                    if f.kind == FrameKind::If {
                        paths.push(f.entry);
                    }
                    self.merge(paths)?;
                }
                self.stack.extend(f.results);
            }
            O::Br { relative_depth } => {
                let vals = self.pop_n(self.label_arity(*relative_depth)?)?;
                self.branch_with(*relative_depth, &vals)?;
                self.set_unreachable()?;
            }
            O::BrIf { relative_depth } => {
                self.pop()?;
                let vals = self.pop_n(self.label_arity(*relative_depth)?)?;
                self.branch_with(*relative_depth, &vals)?;
                self.stack.extend(vals);
            }
            O::BrTable { targets } => {
                self.pop()?;
                let vals = self.pop_n(self.label_arity(targets.default())?)?;
                let mut depths = vec![targets.default()];
                for d in targets.targets() {
                    depths.push(d.map_err(|e| e.to_string())?);
                }
                depths.sort_unstable();
                depths.dedup();
                for d in depths {
                    self.branch_with(d, &vals)?;
                }
                self.set_unreachable()?;
            }
            O::Return => {
                let depth = self.frames.len().saturating_sub(1) as u32;
                let vals = self.pop_n(self.label_arity(depth)?)?;
                self.branch_with(depth, &vals)?;
                self.set_unreachable()?;
            }
            O::Unreachable => self.set_unreachable()?,
            // Everything else (memory, globals, calls, integers, ...): what it pops is
            // observed, what it pushes is today's.
            other => {
                let (pops, pushes) =
                    other.operator_arity(self).ok_or_else(|| format!("an operator of unknown arity: {other:?}"))?;
                for _ in 0..pops {
                    let v = self.pop()?;
                    self.flow.sinks.push((v, None));
                }
                self.stack.extend(std::iter::repeat_n(OPAQUE, pushes as usize));
                if matches!(other, O::ReturnCall { .. } | O::ReturnCallIndirect { .. }) {
                    self.set_unreachable()?;
                }
            }
        }
        Ok(())
    }
}

/// Where to canonicalise in one function, in code order. `params` are the function's
/// parameters; `declared` its other locals.
pub(super) fn analyse(
    info: &ModuleInfo,
    params: u32,
    declared: u64,
    results: u32,
    body: &FunctionBody<'_>,
) -> Result<Vec<Insert>, String> {
    let flow = Flow { nodes: 2, edges: Vec::new(), sources: Vec::new(), sinks: Vec::new() };
    if declared > MAX_GRAPH as u64 {
        return Err("a function with too many locals for the NaN analysis".into());
    }
    let mut locals = vec![OPAQUE; params as usize];
    locals.extend(std::iter::repeat_n(NON_NAN, declared as usize));
    let mut w = Walk { info, flow, stack: Vec::new(), locals, frames: Vec::new(), merge_work: 0 };
    // The function's results are observed by its caller.
    let returned = (0..results).map(|_| w.flow.node()).collect::<Result<Vec<_>, _>>()?;
    for &r in &returned {
        w.flow.sinks.push((r, None));
    }
    w.frames.push(Frame {
        kind: FrameKind::Block,
        block: BlockType::Empty,
        height: 0,
        unreachable: false,
        params: Vec::new(),
        results: returned,
        entry: Vec::new(),
        head: Vec::new(),
        incoming: Vec::new(),
    });
    let mut ops = body.get_operators_reader().map_err(|e| e.to_string())?;
    let mut pending: Option<(Operator<'_>, usize)> = None;
    loop {
        let next = if ops.eof() { None } else { Some(ops.read_with_offset().map_err(|e| e.to_string())?) };
        let end = next.as_ref().map_or(body.range().end, |(_, o)| *o);
        if let Some((op, offset)) = pending.take() {
            w.step(&op, offset, end)?;
        }
        match next {
            Some(n) => pending = Some(n),
            None => break,
        }
    }
    if !w.frames.is_empty() {
        return Err("a function body that does not end".into());
    }
    place(&w.flow)
}

/// Chooses, for each observation, in place or at its sources (see the module docs).
fn place(flow: &Flow) -> Result<Vec<Insert>, String> {
    let sign_changed = flow.edges.iter().filter(|e| e.2).map(|e| e.1);
    // Values that may not be canonicalised in place: opaque, or a source after a sign change.
    let impure = flow.reach(std::iter::once(OPAQUE).chain(sign_changed), true);
    let from_source = flow.reach(flow.sources.iter().map(|s| s.0), true);
    let mut inserts = Vec::new();
    let mut observed = Vec::new();
    for &(n, here) in &flow.sinks {
        if !from_source[n as usize] {
            continue;
        }
        match here {
            Some((at, ty)) if !impure[n as usize] => inserts.push(Insert { at, ty }),
            _ => observed.push(n),
        }
    }
    let reached = flow.reach(observed.into_iter(), false);
    for &(n, at, ty) in &flow.sources {
        if reached[n as usize] {
            inserts.push(Insert { at, ty });
        }
    }
    inserts.sort_by_key(|i| i.at);
    Ok(inserts)
}
