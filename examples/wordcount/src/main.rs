//! Word count as map and reduce steps: `map` counts the words of a text shard on stdin,
//! `reduce` merges count maps from `/input` files and/or stdin.
//! Run: echo 'the cat and the hat' | wasmesh exec examples/target/wasm32-wasip1/release/wordcount.wasm map

use std::collections::BTreeMap;

use wasmesh_guest::{Error, Json, args, bail, input_file, input_files, job, progress};

type Counts = BTreeMap<String, u64>;

#[job]
fn run(input: Vec<u8>) -> Result<Json<Counts>, Error> {
    match args().first().map(String::as_str) {
        Some("map") => map(&String::from_utf8_lossy(&input)),
        Some("reduce") => reduce(&input),
        _ => bail!("usage: wordcount map|reduce (map: text on stdin; reduce: count maps in /input or on stdin)"),
    }
    .map(Json)
}

/// Words are maximal runs of alphanumeric characters, compared in lower case.
fn map(text: &str) -> Result<Counts, Error> {
    let mut counts = Counts::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    Ok(counts)
}

/// Merges every file under `/input` (each a JSON count map) and stdin (a count map or
/// an array of them).
fn reduce(stdin: &[u8]) -> Result<Counts, Error> {
    let mut total = Counts::new();
    let mut merge = |counts: Counts| {
        for (word, n) in counts {
            *total.entry(word).or_default() += n;
        }
    };
    let files = input_files();
    for (i, name) in files.iter().enumerate() {
        let bytes = input_file(name)?;
        let counts: Counts = serde_json::from_slice(&bytes)
            .map_err(|e| Error::msg(format!("/input/{name}: {e}")))?;
        merge(counts);
        progress((i + 1) as f64 / files.len() as f64);
    }
    if !stdin.iter().all(u8::is_ascii_whitespace) {
        match serde_json::from_slice::<serde_json::Value>(stdin)? {
            serde_json::Value::Array(parts) => {
                for part in parts {
                    merge(serde_json::from_value(part)?);
                }
            }
            one => merge(serde_json::from_value(one)?),
        }
    }
    Ok(total)
}
