//! The test guest: one subcommand per behaviour the runtime and host tests assert on.
//! Run: wasmesh exec target/guests/wasm32-wasip1/release/test-guest.wasm echo --input FILE

use std::io::{Read, Write};
use std::process::exit;

use wasmesh_guest::{Level, checkpoint, emit, log_at, progress};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // A job without arguments (an event handler's) takes them from its worker's
    // environment.
    if args.is_empty()
        && let Ok(from_env) = std::env::var("TEST_GUEST_ARGS")
    {
        args = from_env.split_whitespace().map(String::from).collect();
    }
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
        "write-tmp" => {
            // Writes N bytes to /tmp and exits.
            let mut file = std::fs::File::create("/tmp/fill")
                .unwrap_or_else(|e| fail(&format!("create: {e}")));
            write_n(&mut file, number(1));
        }
        "deep-tmp" => {
            // Nests LEVELS directories with 200-byte names below /tmp, each opened
            // relative to the one above (past PATH_MAX), writes N bytes at the bottom,
            // then keeps computing like `fill-tmp`.
            let file = nested_file("/tmp", number(1));
            let mut file = file;
            write_n(&mut file, number(2));
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
        "emit-big" => {
            // N events, each carrying SIZE bytes of padding.
            let pad = "x".repeat(number(2) as usize);
            for i in 0..number(1) {
                emit("Big", &serde_json::json!({ "i": i, "pad": pad }))
                    .unwrap_or_else(|e| fail(&e.to_string()));
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
        "checkpoint-spam" => {
            // Saves N distinct checkpoints of BYTES each as fast as it can, then sleeps
            // SLEEP_MS (so a test can look at the store while the job still runs).
            let mut block = vec![0u8; number(2) as usize];
            for i in 0..number(1) {
                block[..8].copy_from_slice(&i.to_le_bytes());
                checkpoint::save(&block);
            }
            println!("saved {}", number(1));
            std::thread::sleep(std::time::Duration::from_millis(
                arg(3).parse().unwrap_or(0),
            ));
        }
        "fanout" => {
            // Emits N events of type `Spam`, each with a BYTES-long field: a handler
            // that floods its group.
            let payload = "s".repeat(number(2) as usize);
            for i in 0..number(1) {
                emit("Spam", &serde_json::json!({"i": i, "payload": payload}))
                    .unwrap_or_else(|e| fail(&e.to_string()));
            }
        }
        "probe-fd" => {
            // The WASI errno of fd_prestat_get on descriptor N (0: a preopened
            // directory; 8: EBADF, no such descriptor).
            #[link(wasm_import_module = "wasi_snapshot_preview1")]
            unsafe extern "C" {
                fn fd_prestat_get(fd: u32, out: *mut u64) -> u16;
            }
            let mut prestat = [0u64; 2];
            // SAFETY: `prestat` is larger than the 8-byte prestat record.
            let errno = unsafe { fd_prestat_get(number(1) as u32, prestat.as_mut_ptr()) };
            println!("{errno}");
        }
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

/// Makes `levels` nested directories below `top`, each created and opened relative to
/// the one above through WASI directly (no path ever names more than one level), and
/// creates a file at the bottom.
fn nested_file(top: &str, levels: u64) -> std::fs::File {
    use std::os::fd::{AsRawFd, FromRawFd};
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        fn path_create_directory(fd: u32, path: *const u8, len: usize) -> u16;
        #[allow(clippy::too_many_arguments)]
        fn path_open(
            fd: u32,
            dirflags: u32,
            path: *const u8,
            len: usize,
            oflags: u32,
            rights_base: u64,
            rights_inheriting: u64,
            fdflags: u32,
            opened: *mut u32,
        ) -> u16;
    }
    const ALL_RIGHTS: u64 = 0x1FFF_FFFF;
    // A directory opened with `fd_write` rights is EISDIR.
    const DIR_RIGHTS: u64 = ALL_RIGHTS & !(1 << 6);
    const O_CREAT: u32 = 1;
    const O_DIRECTORY: u32 = 2;
    let dir = std::fs::File::open(top).unwrap_or_else(|e| fail(&format!("open {top}: {e}")));
    let mut fd = dir.as_raw_fd() as u32;
    std::mem::forget(dir);
    let name = "d".repeat(200);
    for level in 0..levels {
        let mut next = 0u32;
        // SAFETY: the name is valid for its length and `next` outlives the call.
        let errno = unsafe {
            path_create_directory(fd, name.as_ptr(), name.len());
            path_open(
                fd,
                0,
                name.as_ptr(),
                name.len(),
                O_DIRECTORY,
                DIR_RIGHTS,
                DIR_RIGHTS,
                0,
                &mut next,
            )
        };
        if errno != 0 {
            fail(&format!("level {level}: errno {errno}"));
        }
        fd = next;
    }
    let mut file = 0u32;
    let leaf = "fill";
    // SAFETY: as above.
    let errno = unsafe {
        path_open(
            fd,
            0,
            leaf.as_ptr(),
            leaf.len(),
            O_CREAT,
            ALL_RIGHTS,
            ALL_RIGHTS,
            0,
            &mut file,
        )
    };
    if errno != 0 {
        fail(&format!("creating the file: errno {errno}"));
    }
    // SAFETY: `file` is a descriptor this process just opened and owns alone.
    unsafe { std::fs::File::from_raw_fd(file as i32) }
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
