#[wasmesh_guest::job]
fn run<T: wasmesh_guest::FromInput>(input: T) {
    let _ = input;
}
