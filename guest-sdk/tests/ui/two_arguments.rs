#[wasmesh_guest::job]
fn run(a: Vec<u8>, b: Vec<u8>) -> Vec<u8> {
    [a, b].concat()
}
