//! The `wasmesh` command-line tool.

fn main() -> std::process::ExitCode {
    wasmesh_host::cli::main()
}
