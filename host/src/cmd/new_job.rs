//! `wasmesh new NAME`: scaffolds a job crate that builds on its own, outside this
//! repository: Cargo.toml, `src/main.rs` with a `#[job]`, `.cargo/config.toml`
//! selecting `wasm32-wasip1`, a README with the build, exec and upload commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::cmd::say;

/// Arguments of `wasmesh new`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job's crate name (letters, digits, `-` and `_`, starting with a letter).
    pub name: String,
    /// Where to make it [default: ./NAME]; it must not exist or be empty.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Depend on the SDK at this path (a checkout's `guest-sdk`) instead of the
    /// published `wasmesh-guest` crate.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

const MAIN_RS: &str = include_str!("new_job/main.rs.txt");
const README: &str = include_str!("new_job/README.md.txt");

/// The SDK version a new job depends on: this binary's own.
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
wasmesh-guest = {sdk}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

# Small, fast modules: the sandbox compiles each once and caches it.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true

# A workspace of its own, so it builds wherever it is put.
[workspace]
"#
    )
}

/// Writes the job crate `name` into `dir`.
pub fn scaffold(name: &str, dir: &Path, sdk_path: Option<&Path>) -> anyhow::Result<()> {
    if !valid_name(name) {
        bail!("{name:?} is not a crate name: letters, digits, '-' and '_', starting with a letter");
    }
    if dir.exists() && dir.read_dir()?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = match sdk_path {
        Some(path) => {
            let path = std::fs::canonicalize(path)
                .with_context(|| format!("the SDK at {}", path.display()))?;
            if !path.join("Cargo.toml").is_file() {
                bail!("{} has no Cargo.toml", path.display());
            }
            format!("{{ path = {:?} }}", path.display().to_string())
        }
        None => format!("\"{SDK_VERSION}\""),
    };
    let files: [(&str, String); 5] = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/main.rs", MAIN_RS.replace("{{name}}", name)),
        (
            ".cargo/config.toml",
            "# Jobs are WASI preview 1 commands.\n[build]\ntarget = \"wasm32-wasip1\"\n".into(),
        ),
        ("README.md", README.replace("{{name}}", name)),
        (".gitignore", "/target\n".into()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `wasmesh new`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.path.unwrap_or_else(|| PathBuf::from(&args.name));
    scaffold(&args.name, &dir, args.sdk_path.as_deref())?;
    say!(
        "made {name} in {dir}\n  cd {dir}\n  rustup target add wasm32-wasip1   # once\n  cargo build --release\n  echo '{{\"name\":\"world\"}}' | wasmesh exec target/wasm32-wasip1/release/{name}.wasm",
        name = args.name,
        dir = dir.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_places_are_checked_before_anything_is_written() {
        for bad in ["", "1job", "my job", "../up", "job/x", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name("my-job_2"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = scaffold("job", dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let fresh = dir.path().join("fresh");
        scaffold("fresh", &fresh, None).unwrap();
        let manifest = std::fs::read_to_string(fresh.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("wasmesh-guest = \"{SDK_VERSION}\"")),
            "{manifest}"
        );
    }
}
