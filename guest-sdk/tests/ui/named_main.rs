#[wasmesh_guest::job]
fn main() {}
