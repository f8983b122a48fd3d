//! The `wasmesh` command-line tool: a thin shell over the `wasmesh_host` library.

mod cmd;

fn main() -> std::process::ExitCode {
    cmd::main()
}
