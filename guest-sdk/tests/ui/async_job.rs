#[wasmesh_guest::job]
async fn run(input: Vec<u8>) -> Vec<u8> {
    input
}
