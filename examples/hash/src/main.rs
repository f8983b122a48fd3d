//! BLAKE3 of its input, in hex: of stdin, or of each file named as an argument (`HASH  PATH`
//! lines, like b3sum), so its answer is checkable anywhere.
//! Run: echo -n hello | wasmesh exec examples/target/wasm32-wasip1/release/hash.wasm

use wasmesh_guest::{Error, args, job};

#[job]
fn run(input: Vec<u8>) -> Result<String, Error> {
    let paths = args();
    if paths.is_empty() {
        return Ok(format!("{}\n", blake3::hash(&input).to_hex()));
    }
    let mut out = String::new();
    for path in paths {
        let bytes = std::fs::read(&path).map_err(|e| Error::msg(format!("{path}: {e}")))?;
        out.push_str(&format!("{}  {path}\n", blake3::hash(&bytes).to_hex()));
    }
    Ok(out)
}
