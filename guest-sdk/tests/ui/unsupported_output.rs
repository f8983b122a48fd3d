struct Custom;

#[wasmesh_guest::job]
fn run() -> Custom {
    Custom
}
