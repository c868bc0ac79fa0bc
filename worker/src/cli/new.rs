//! `spare new NAME`: writes a ready Rust guest project (a task for `spare submit`) from the
//! templates in `cli/new/`, with a copy of the `spare-guest` helpers so it builds offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

/// Options of `spare new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// Directory to create (its last component names the crate and the .wasm, e.g. `word-count`).
    path: PathBuf,
    /// Write into the directory even if it exists and holds files (existing files with the
    /// template's names are replaced).
    #[arg(long)]
    force: bool,
}

/// The files of a new project: (path inside it, contents with `{{name}}` to fill, executable).
const FILES: &[(&str, &str, bool)] = &[
    ("Cargo.toml", include_str!("new/Cargo.toml.in"), false),
    ("src/main.rs", include_str!("new/main.rs.in"), false),
    ("build.sh", include_str!("new/build.sh.in"), true),
    ("README.md", include_str!("new/README.md.in"), false),
    (".gitignore", include_str!("new/gitignore.in"), false),
    ("spare-guest/Cargo.toml", include_str!("new/guest-Cargo.toml.in"), false),
    // The helpers themselves, as this build of Spare has them.
    ("spare-guest/src/lib.rs", include_str!("../../../sdk/guest/src/lib.rs"), false),
];

/// Longest crate name taken.
const MAX_NAME: usize = 64;

/// The crate name a directory gives: its last component, which must be a valid crate name.
fn crate_name(path: &Path) -> anyhow::Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} does not end in a name to give the task", path.display()))?;
    let valid = name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!(
            "{name:?} cannot name a Rust crate: use letters, digits, '-' and '_', starting with a letter (at most {MAX_NAME})"
        );
    }
    Ok(name.to_string())
}

/// Writes the project; returns what to run next.
pub fn write_project(path: &Path, force: bool) -> anyhow::Result<String> {
    let name = crate_name(path)?;
    if !force
        && let Ok(mut entries) = std::fs::read_dir(path)
        && entries.next().is_some()
    {
        bail!("{} exists and is not empty; choose another name, or pass --force to write into it", path.display());
    }
    for (file, template, executable) in FILES {
        let to = path.join(file);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&to, template.replace("{{name}}", &name)).with_context(|| format!("cannot write {}", to.display()))?;
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", to.display()))?;
        }
    }
    Ok(format!(
        "created the task {name} in {dir}\nnext:\n  cd {dir}\n  ./build.sh                 # builds {name}.wasm (wasm32-wasip1)\n  spare submit {name}.wasm --input FILE --wait",
        dir = path.display()
    ))
}

/// Runs `spare new`.
pub fn run(a: NewArgs) -> anyhow::Result<ExitCode> {
    println!("{}", write_project(&a.path, a.force)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_crate_names() {
        assert_eq!(crate_name(Path::new("/tmp/word-count")).unwrap(), "word-count");
        for bad in ["/tmp/9lives", "/tmp/has space", "/", "/tmp/é"] {
            assert!(crate_name(Path::new(bad)).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn writes_every_file_once_and_refuses_a_full_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello");
        let next = write_project(&path, false).unwrap();
        assert!(next.contains("./build.sh") && next.contains("spare submit hello.wasm"), "{next}");
        let cargo = std::fs::read_to_string(path.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"hello\"") && !cargo.contains("{{"), "{cargo}");
        let build = std::fs::read_to_string(path.join("build.sh")).unwrap();
        assert!(build.contains("cp \"${CARGO_TARGET_DIR:-target}/$TARGET/release/hello.wasm\" hello.wasm"));
        let err = write_project(&path, false).unwrap_err().to_string();
        assert!(err.contains("is not empty") && err.contains("--force"), "{err}");
        write_project(&path, true).unwrap();
    }
}
