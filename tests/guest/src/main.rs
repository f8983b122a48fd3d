//! The test guest: one subcommand per behaviour the runtime and host tests assert on.
//! Run: wasmesh exec target/guests/wasm32-wasip1/release/test-guest.wasm echo --input FILE

use std::io::{Read, Write};
use std::process::exit;

use wasmesh_guest::{Level, checkpoint, emit, log_at, progress};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `progress-then SUBCOMMAND ...` reports progress 0.5 first, so a test can react once
    // the guest is surely running (e.g. cancel it) without sleeping.
    if args.first().map(String::as_str) == Some("progress-then") {
        progress(0.5);
        args.remove(0);
    }
    // `sleep-then MS SUBCOMMAND ...` sleeps first: a job that takes a while and still
    // produces the output of any other subcommand.
    if args.first().map(String::as_str) == Some("sleep-then") {
        let ms = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(0);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        args.drain(..2.min(args.len()));
    }
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let number = |i: usize| -> u64 {
        arg(i)
            .parse()
            .unwrap_or_else(|_| fail(&format!("argument {i} must be a number")))
    };
    match arg(0) {
        "noop" => {}
        "echo" => {
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input).expect("stdin");
            std::io::stdout().write_all(&input).expect("stdout");
        }
        "args" => println!("{}", args[1..].join("\n")),
        "env" => println!(
            "{}",
            std::env::var(arg(1)).unwrap_or_else(|_| "<unset>".into())
        ),
        "env-count" => println!("{}", std::env::vars().count()),
        "alloc" => {
            let n = number(1) as usize;
            let mut block = vec![0u8; n];
            // Touch every page so the memory is really used.
            for i in (0..n).step_by(4096) {
                block[i] = 1;
            }
            println!("allocated {}", std::hint::black_box(&block).len());
        }
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "burn" => {
            let n = number(1);
            let mut x: u64 = 0;
            for i in 0..n {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            println!("{x}");
        }
        "sleep" => std::thread::sleep(std::time::Duration::from_millis(number(1))),
        "stack-overflow" => println!("{}", recurse(std::hint::black_box(1))),
        "big-output" => write_n(&mut std::io::stdout(), number(1)),
        "fill-tmp" => {
            // Writes N bytes to /tmp, then keeps computing so the host has time to
            // notice (or to time the run out).
            let mut file = std::fs::File::create("/tmp/fill")
                .unwrap_or_else(|e| fail(&format!("create: {e}")));
            write_n(&mut file, number(1));
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "big-stderr" => write_n(&mut std::io::stderr(), number(1)),
        "read-file" => match std::fs::read(arg(1)) {
            Ok(bytes) => std::io::stdout().write_all(&bytes).expect("stdout"),
            Err(e) => fail(&format!("read {}: {e}", arg(1))),
        },
        "write-file" => match std::fs::write(arg(1), arg(2)) {
            Ok(()) => println!("wrote {}", arg(1)),
            Err(e) => fail(&format!("write {}: {e}", arg(1))),
        },
        "list-dir" => match std::fs::read_dir(arg(1)) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                println!("{}", names.join("\n"));
            }
            Err(e) => fail(&format!("list {}: {e}", arg(1))),
        },
        "symlink" => match symlink_in_first_preopen(arg(1), arg(2)) {
            0 => println!("linked {} -> {}", arg(2), arg(1)),
            errno => fail(&format!("symlink {}: errno {errno}", arg(2))),
        },
        "emit" => {
            let fields: serde_json::Value =
                serde_json::from_str(if arg(2).is_empty() { "{}" } else { arg(2) })
                    .unwrap_or_else(|e| fail(&format!("fields: {e}")));
            match emit(arg(1), &fields) {
                Ok(()) => println!("emitted {}", arg(1)),
                Err(e) => fail(&e.to_string()),
            }
        }
        "emit-many" => {
            for i in 0..number(1) {
                emit("Tick", &serde_json::json!({ "i": i }))
                    .unwrap_or_else(|e| fail(&e.to_string()));
            }
        }
        "progress" => {
            for step in 1..=4 {
                progress(f64::from(step) / 4.0);
            }
        }
        "log" => log_at(Level::Warn, arg(1)),
        "checkpoint-save" => checkpoint::save(arg(1).as_bytes()),
        "checkpoint-load" => match checkpoint::load() {
            Some(bytes) => std::io::stdout().write_all(&bytes).expect("stdout"),
            None => print!("none"),
        },
        "checkpoint-big" => checkpoint::save(&vec![7u8; number(1) as usize]),
        "panic" => panic!("{}", arg(1)),
        "exit" => exit(number(1) as i32),
        "trap" => core::arch::wasm32::unreachable(),
        other => fail(&format!("unknown subcommand {other:?}")),
    }
}

/// Creates the symlink `name -> target` relative to the first preopened directory
/// (file descriptor 3). std's `symlink_path` is unstable, so this calls WASI directly.
fn symlink_in_first_preopen(target: &str, name: &str) -> u16 {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn path_symlink(
            old: *const u8,
            old_len: usize,
            fd: u32,
            new: *const u8,
            new_len: usize,
        ) -> u16;
    }
    // SAFETY: both strings are valid for their lengths during the call.
    unsafe { path_symlink(target.as_ptr(), target.len(), 3, name.as_ptr(), name.len()) }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let local = [n; 64];
    std::hint::black_box(&local);
    recurse(n + 1) + local[0]
}

fn write_n(out: &mut dyn Write, n: u64) {
    let chunk = [b'x'; 8192];
    let mut left = n;
    while left > 0 {
        let take = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..take])
            .unwrap_or_else(|e| fail(&format!("write: {e}")));
        left -= take as u64;
    }
    out.flush().ok();
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    exit(3)
}
