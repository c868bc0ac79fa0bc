//! Module checks done at submission and before compiling: size, well-formedness (by the engine's
//! own validator, with the engine's feature set), a `_start: func() -> ()` export, imports only
//! of WASI preview 1 functions with their exact signatures, and tables within the pool's size.
//!
//! The allowed imports are read from the sandbox's own linker (what `add_to_linker_sync` and the
//! virtual `poll_oneoff` define), minus `sock_*`: the ABI has no sockets, and although those
//! functions would only fail at run time (no socket descriptors exist), refusing them at
//! submission tells the submitter early and keeps the reachable host surface smaller.

use std::collections::HashMap;
use std::fmt;

use wasmparser::{CompositeInnerType, Encoding, ExternalKind, Parser, Payload, TypeRef};
use wasmtime::{Engine, Extern, Linker, Module, Store};

use super::engine::{MAX_TABLES_PER_MODULE, TABLE_ELEMENTS};
use super::error::{ModuleError, SandboxError};
use super::run::StoreData;

/// The only import module of ABI v1.
pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// A value type, as far as import signatures need it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Val {
    I32,
    I64,
    F32,
    F64,
    V128,
    Ref,
}

/// A function signature, comparable between wasmtime's and wasmparser's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sig {
    params: Vec<Val>,
    results: Vec<Val>,
}

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list =
            |v: &[Val]| v.iter().map(|x| format!("{x:?}").to_lowercase()).collect::<Vec<_>>().join(", ");
        write!(f, "func({}) -> ({})", list(&self.params), list(&self.results))
    }
}

impl Sig {
    fn from_wasmtime(ty: &wasmtime::FuncType) -> Sig {
        let conv = |v: wasmtime::ValType| match v {
            wasmtime::ValType::I32 => Val::I32,
            wasmtime::ValType::I64 => Val::I64,
            wasmtime::ValType::F32 => Val::F32,
            wasmtime::ValType::F64 => Val::F64,
            wasmtime::ValType::V128 => Val::V128,
            wasmtime::ValType::Ref(_) => Val::Ref,
        };
        Sig { params: ty.params().map(conv).collect(), results: ty.results().map(conv).collect() }
    }

    fn from_parser(ty: &wasmparser::FuncType) -> Sig {
        let conv = |v: &wasmparser::ValType| match v {
            wasmparser::ValType::I32 => Val::I32,
            wasmparser::ValType::I64 => Val::I64,
            wasmparser::ValType::F32 => Val::F32,
            wasmparser::ValType::F64 => Val::F64,
            wasmparser::ValType::V128 => Val::V128,
            wasmparser::ValType::Ref(_) => Val::Ref,
        };
        Sig {
            params: ty.params().iter().map(conv).collect(),
            results: ty.results().iter().map(conv).collect(),
        }
    }

    fn is_unit(&self) -> bool {
        self.params.is_empty() && self.results.is_empty()
    }
}

/// The WASI functions a module may import, with their signatures.
pub(crate) struct AllowedImports(HashMap<String, Sig>);

impl AllowedImports {
    /// Reads the linker's definitions (through a throwaway store).
    pub(crate) fn from_linker(
        engine: &Engine,
        linker: &Linker<StoreData>,
    ) -> Result<AllowedImports, SandboxError> {
        let mut store = Store::new(engine, StoreData::placeholder());
        let defs: Vec<(String, String, Extern)> =
            linker.iter(&mut store).map(|(m, n, e)| (m.to_string(), n.to_string(), e)).collect();
        let mut map = HashMap::new();
        for (module, name, ext) in defs {
            if module != WASI_MODULE || name.starts_with("sock_") {
                continue;
            }
            if let Extern::Func(f) = ext {
                map.insert(name, Sig::from_wasmtime(&f.ty(&store)));
            }
        }
        if map.is_empty() {
            return Err(SandboxError::Engine("the WASI linker defines no functions".into()));
        }
        Ok(AllowedImports(map))
    }

    /// The allowed function names, sorted (for docs and diagnostics).
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.keys().cloned().collect();
        v.sort();
        v
    }
}

fn not_wasm(e: impl fmt::Display) -> ModuleError {
    ModuleError::NotWasm(e.to_string())
}

/// What validation needs from a module's sections.
#[derive(Default)]
struct Shape<'a> {
    /// Signature of each type index (`None` for non-function types).
    types: Vec<Option<Sig>>,
    /// Type index of each function index (imports first).
    funcs: Vec<u32>,
    imports: Vec<wasmparser::Import<'a>>,
    start: Option<(ExternalKind, u32)>,
    /// Initial size of each defined table.
    tables: Vec<u64>,
}

fn shape(wasm: &[u8]) -> Result<Shape<'_>, ModuleError> {
    let mut s = Shape::default();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(not_wasm)? {
            Payload::Version { encoding: Encoding::Component, .. } => {
                return Err(ModuleError::NotWasm("a component, not a core module".into()));
            }
            Payload::TypeSection(r) => {
                for group in r {
                    for sub in group.map_err(not_wasm)?.into_types() {
                        s.types.push(match &sub.composite_type.inner {
                            CompositeInnerType::Func(f) => Some(Sig::from_parser(f)),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    let imp = imp.map_err(not_wasm)?;
                    if let TypeRef::Func(t) | TypeRef::FuncExact(t) = imp.ty {
                        s.funcs.push(t);
                    }
                    s.imports.push(imp);
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    s.funcs.push(t.map_err(not_wasm)?);
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    s.tables.push(t.map_err(not_wasm)?.ty.initial);
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e.map_err(not_wasm)?;
                    if e.name == "_start" {
                        s.start = Some((e.kind, e.index));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

impl Shape<'_> {
    fn func_sig(&self, func: u32) -> Option<&Sig> {
        let ty = *self.funcs.get(func as usize)?;
        self.types.get(ty as usize)?.as_ref()
    }

    fn type_sig(&self, ty: u32) -> Option<&Sig> {
        self.types.get(ty as usize)?.as_ref()
    }
}

/// The most bytes a memory the module defines starts with (its initial pages times the page
/// size), or 0 when it defines none. A task limit below it fails every task with `memory limit`.
pub fn initial_memory_bytes(wasm: &[u8]) -> u64 {
    let mut most = 0u64;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Ok(Payload::MemorySection(r)) = payload {
            for m in r.into_iter().flatten() {
                let page = 1u64 << m.page_size_log2.unwrap_or(16);
                most = most.max(m.initial.saturating_mul(page));
            }
        }
    }
    most
}

/// Checks a module against the ABI. Never compiles it.
pub(crate) fn validate(
    engine: &Engine,
    allowed: &AllowedImports,
    wasm: &[u8],
    max: usize,
) -> Result<(), ModuleError> {
    if wasm.len() > max {
        return Err(ModuleError::TooLarge { size: wasm.len(), max });
    }
    if wasm.is_empty() {
        return Err(ModuleError::NotWasm("empty input".into()));
    }
    if !wasm.starts_with(b"\0asm") {
        return Err(ModuleError::NotWasm("no WebAssembly magic number".into()));
    }
    Module::validate(engine, wasm).map_err(|e| ModuleError::NotWasm(format!("{e:#}")))?;
    let s = shape(wasm)?;

    for imp in &s.imports {
        let forbidden =
            || ModuleError::ForbiddenImport { module: imp.module.to_string(), name: imp.name.to_string() };
        let (TypeRef::Func(ty) | TypeRef::FuncExact(ty)) = imp.ty else {
            return Err(forbidden());
        };
        if imp.module != WASI_MODULE {
            return Err(forbidden());
        }
        let Some(expected) = allowed.0.get(imp.name) else {
            return Err(forbidden());
        };
        match s.type_sig(ty) {
            Some(found) if found == expected => {}
            found => {
                return Err(ModuleError::ImportSignature {
                    name: imp.name.to_string(),
                    expected: expected.to_string(),
                    found: found.map_or_else(|| "not a function type".to_string(), Sig::to_string),
                });
            }
        }
    }

    match s.start {
        None => return Err(ModuleError::NoStart),
        Some((ExternalKind::Func | ExternalKind::FuncExact, index)) => match s.func_sig(index) {
            Some(sig) if sig.is_unit() => {}
            Some(sig) => return Err(ModuleError::BadStart(format!("its type is {sig}"))),
            None => return Err(ModuleError::BadStart("its type is unknown".into())),
        },
        Some((kind, _)) => return Err(ModuleError::BadStart(format!("it is a {kind:?}, not a function"))),
    }

    if s.tables.len() > MAX_TABLES_PER_MODULE as usize {
        return Err(ModuleError::Unsupported(format!(
            "{} tables, the sandbox allows {MAX_TABLES_PER_MODULE}",
            s.tables.len()
        )));
    }
    if let Some(big) = s.tables.iter().find(|&&t| t > TABLE_ELEMENTS as u64) {
        return Err(ModuleError::Unsupported(format!(
            "a table of {big} initial elements, the sandbox allows {TABLE_ELEMENTS}"
        )));
    }
    Ok(())
}
