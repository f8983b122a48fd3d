#[wasmesh_guest::job(retries = 3)]
fn run() {}
