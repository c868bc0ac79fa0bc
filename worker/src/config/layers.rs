//! Reading [`PeerConfig`] in layers with figment: built-in defaults, then the TOML file given
//! by `--config`, then `SPARE_<KEY>` environment variables, then flags; each later layer wins.
//! Figment remembers which layer gave each value, which `--print-config` shows.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;

use super::{KEYS, PeerConfig};

/// The prefix of the environment variables that set keys (`SPARE_MAX_DISK` sets `max_disk`).
pub const ENV_PREFIX: &str = "SPARE_";

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is missing, is not TOML, has an unknown key or a value of the wrong kind.
    #[error("configuration: {0}")]
    Figment(String),
    /// A value is of the right kind but cannot be used.
    #[error("configuration: {0}")]
    Invalid(super::Invalid),
}

impl From<super::Invalid> for LoadError {
    fn from(e: super::Invalid) -> LoadError {
        LoadError::Invalid(e)
    }
}

/// The layers, in order. `flags` is anything that serializes to a map of the keys given on the
/// command line (keys not given are left out, so they do not hide the layers below).
pub fn figment<F: Serialize>(file: Option<&Path>, flags: &F) -> Figment {
    let mut f = Figment::from(Serialized::defaults(PeerConfig::default()));
    if let Some(path) = file {
        // `Toml::file` treats a missing file as empty; a named file must exist.
        f = f.merge(Toml::file_exact(path));
    }
    // Only the keys of the configuration: `SPARE_LOG`, `SPARE_PEER` and the like belong to others.
    f.merge(Env::prefixed(ENV_PREFIX).only(KEYS)).merge(Serialized::defaults(flags))
}

/// Reads and checks the configuration (every value but `data_dir`, which the caller needs).
pub fn load(figment: &Figment) -> Result<PeerConfig, LoadError> {
    let config: PeerConfig = figment.extract().map_err(|e| LoadError::Figment(describe(e)))?;
    config.check()?;
    Ok(config)
}

/// Figment's errors, one per problem, each with the key and where its value came from.
fn describe(e: figment::Error) -> String {
    e.into_iter().map(|e| describe_one(&e)).collect::<Vec<_>>().join("; ")
}

fn describe_one(e: &figment::Error) -> String {
    use figment::error::Kind;
    // Every key lives in figment's default profile; its name is noise here.
    let key: Vec<&str> = e.path.iter().map(String::as_str).skip_while(|p| *p == "default").collect();
    let key = key.join(".");
    let from = match &e.metadata {
        Some(md) if md.name.contains("environment") => format!(" (from {ENV_PREFIX}{})", key.to_ascii_uppercase()),
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => format!(" (in {})", p.display()),
            _ => String::new(),
        },
        None => String::new(),
    };
    let what = match &e.kind {
        Kind::UnknownField(k, _) => return format!("unknown key `{k}`{from}; the keys are those of `spare peer --print-config`"),
        Kind::Message(m) => m.trim().to_string(),
        other => other.to_string(),
    };
    if key.is_empty() { format!("{what}{from}") } else { format!("{key}: {what}{from}") }
}

/// The name figment gives the flags' layer (the type it serialized: a reference to `F`).
pub fn flags_name<F>() -> &'static str {
    std::any::type_name::<&F>()
}

/// Where a key's value came from, as a person would say it.
pub fn source_of(figment: &Figment, key: &str, flags_type: &str) -> String {
    let Ok(value) = figment.find_value(key) else { return "default".into() };
    let Some(md) = figment.get_metadata(value.tag()) else { return "default".into() };
    if md.name == std::any::type_name::<PeerConfig>() {
        "default".into()
    } else if md.name == flags_type {
        format!("flag --{}", key.replace('_', "-"))
    } else if md.name.contains("environment") {
        format!("env {ENV_PREFIX}{}", key.to_ascii_uppercase())
    } else if let Some(figment::Source::File(p)) = &md.source {
        format!("file {}", p.display())
    } else {
        md.name.to_string()
    }
}

/// The effective configuration as TOML lines, each with where its value came from; unset keys
/// are shown commented out.
pub fn render<F>(config: &PeerConfig, figment: &Figment) -> String {
    let flags_type = flags_name::<F>();
    let json = serde_json::to_value(config).unwrap_or_default();
    let mut lines: Vec<(String, String)> = Vec::with_capacity(KEYS.len());
    for key in KEYS {
        let value = &json[*key];
        let text = if value.is_null() { format!("# {key} = (unset)") } else { format!("{key} = {}", toml_text(value)) };
        lines.push((text, source_of(figment, key, flags_type)));
    }
    let width = lines.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    lines.iter().map(|(t, s)| format!("{t:width$}  # {s}\n")).collect()
}

/// A JSON value written as TOML (the values of [`PeerConfig`] are strings, numbers, booleans
/// and arrays of strings, which both write alike).
fn toml_text(v: &serde_json::Value) -> String {
    v.to_string()
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail returns its own error type
mod tests {
    use super::*;
    use crate::config::Size;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        cpus: Option<usize>,
    }

    #[test]
    fn each_layer_overrides_the_one_below_and_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("spare.toml", "cpus = 3\nmax_disk = \"2 GiB\"\nmin_quorum = 2\n")?;
            jail.set_env("SPARE_MIN_QUORUM", "3");
            jail.set_env("SPARE_LOG", "debug"); // someone else's variable: ignored
            let f = figment(Some(Path::new("spare.toml")), &Flags { cpus: Some(5) });
            let c = load(&f).expect("loads");
            assert_eq!((c.cpus, c.max_disk, c.min_quorum), (5, Some(Size(2 << 30)), 3));
            let t = flags_name::<Flags>();
            assert_eq!(source_of(&f, "cpus", t), "flag --cpus");
            assert_eq!(source_of(&f, "min_quorum", t), "env SPARE_MIN_QUORUM");
            assert!(source_of(&f, "max_disk", t).starts_with("file "), "{}", source_of(&f, "max_disk", t));
            assert_eq!(source_of(&f, "peer_rate", t), "default");
            let text = render::<Flags>(&c, &f);
            assert!(text.contains("max_disk = \"2 GiB\""), "{text}");
            assert!(text.contains("# hours = (unset)"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "max_dsik = \"1 GiB\"\n")?;
            let e = load(&figment(Some(Path::new("typo.toml")), &Flags::default())).expect_err("unknown key");
            assert!(e.to_string().contains("max_dsik"), "{e}");
            jail.create_file("bad.toml", "max_disk = \"lots\"\n")?;
            let e = load(&figment(Some(Path::new("bad.toml")), &Flags::default())).expect_err("bad size");
            assert!(e.to_string().contains("max_disk"), "{e}");
            jail.create_file("range.toml", "max_other_load = 2.0\n")?;
            let e = load(&figment(Some(Path::new("range.toml")), &Flags::default())).expect_err("out of range");
            assert!(e.to_string().contains("max_other_load"), "{e}");
            let e = load(&figment(Some(Path::new("missing.toml")), &Flags::default())).expect_err("missing file");
            assert!(e.to_string().contains("missing.toml"), "{e}");
            jail.set_env("SPARE_CPUS", "many");
            let e = load(&figment(None, &Flags::default())).expect_err("bad env");
            assert!(e.to_string().contains("CPUS") || e.to_string().contains("cpus"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn a_file_may_name_hosts_and_an_unknown_one_is_refused_by_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("names.toml", "data_dir = \"d\"\nlisten = \"localhost:7000\"\nweb = \"localhost:7080\"\n")?;
            let c = load(&figment(Some(Path::new("names.toml")), &Flags::default())).expect("host names load");
            assert_eq!(c.node_config().expect("they resolve").listen, "127.0.0.1:7000".parse().unwrap());
            jail.create_file("unknown.toml", "metrics = \"no-such-host.invalid:9187\"\n")?;
            let e = load(&figment(Some(Path::new("unknown.toml")), &Flags::default())).expect_err("an unknown host");
            assert!(e.to_string().contains("metrics: cannot resolve \"no-such-host.invalid:9187\""), "{e}");
            jail.create_file("form.toml", "listen = \"7000\"\n")?;
            let e = load(&figment(Some(Path::new("form.toml")), &Flags::default())).expect_err("no port");
            assert!(e.to_string().contains("listen") && e.to_string().contains("HOST:PORT"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn the_packaged_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/spare.toml");
        let f = Figment::from(Serialized::defaults(PeerConfig::default())).merge(Toml::file_exact(&path));
        let c = load(&f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        c.node_config().expect("the example is a complete, valid configuration");
    }
}
