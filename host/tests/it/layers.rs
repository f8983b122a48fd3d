//! The host crate's layering rules (ARCHITECTURE.md, "Layers"), checked on its source:
//! imports point one way, axum stays in `api/`, SQL stays in `store/`, and states are
//! compared as enums, never as strings.

use std::path::{Path, PathBuf};

/// The library's layers, outermost first: a module may use its own layer and those
/// after it, never one before.
const LAYERS: &[&str] = &[
    "api", "cluster", "run", "engine", "webhooks", "store", "cas", "model",
];

/// The blocking client library stands apart: it knows only the wire types.
const CLIENT: &[&str] = &["dag", "client"];

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code lines: comments and doc comments dropped.
fn code_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with("//"))
        .map(String::from)
        .collect()
}

/// Every library source file with its top-level module, and its code lines (comments
/// and doc comments dropped).
fn library() -> Vec<(String, PathBuf, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&src).unwrap().to_path_buf();
            let first = relative.components().next()?.as_os_str().to_str()?;
            let module = first.trim_end_matches(".rs").to_string();
            if module == "cmd" || module == "main" || module == "lib" {
                return None;
            }
            let code = code_lines(&path);
            Some((module, relative, code))
        })
        .collect()
}

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| *layer == module)
}

#[test]
fn imports_point_one_way() {
    let mut wrong = Vec::new();
    for (module, path, code) in library() {
        for line in &code {
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let allowed = match (rank(&module), rank(&used)) {
                    (Some(from), Some(to)) => to >= from,
                    // The client library uses itself and the wire types only.
                    (None, Some(_)) => CLIENT.contains(&module.as_str()) && used == "model",
                    (_, None) => {
                        CLIENT.contains(&used.as_str()) && CLIENT.contains(&module.as_str())
                    }
                };
                if !allowed {
                    wrong.push(format!("{}: {module} uses crate::{used}", path.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn only_the_api_knows_axum_and_only_the_store_speaks_sql() {
    let sql = [
        "SELECT ",
        "INSERT INTO",
        "UPDATE ",
        "DELETE FROM",
        "CREATE TABLE",
    ];
    let mut wrong = Vec::new();
    for (module, path, code) in library() {
        for line in &code {
            if module != "api" && line.contains("axum") {
                wrong.push(format!("{}: axum outside api/: {line}", path.display()));
            }
            let in_string = line.contains('"');
            if module != "store" && in_string && sql.iter().any(|s| line.contains(s)) {
                wrong.push(format!("{}: SQL outside store/: {line}", path.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The binary's command files, with their code lines.
fn commands() -> Vec<(String, PathBuf, Vec<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src.join("cmd"), &mut files);
    files
        .into_iter()
        .map(|path| {
            let code = code_lines(&path);
            (
                "cmd".to_string(),
                path.strip_prefix(&src).unwrap().to_path_buf(),
                code,
            )
        })
        .collect()
}

#[test]
fn job_and_queue_states_are_compared_as_enums() {
    let states = [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "active",
        "draining",
    ];
    let mut wrong = Vec::new();
    for (module, path, code) in library().into_iter().chain(commands()) {
        if module == "store" || module == "model" {
            continue;
        }
        for line in &code {
            for state in states {
                let quoted = format!("\"{state}\"");
                let compared = [
                    format!("== {quoted}"),
                    format!("!= {quoted}"),
                    format!("{quoted} =>"),
                    format!("{quoted} |"),
                    format!("{quoted}.into()"),
                ];
                if compared.iter().any(|c| line.contains(c.as_str())) {
                    wrong.push(format!("{}: {line}", path.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "state strings in control flow:\n{}",
        wrong.join("\n")
    );
}
