//! Counts the primes up to N (the first argument, default 10,000,000) with a sieve and
//! prints the count: the integer kernel of the sandbox benchmarks.
//! Run: wasmesh exec examples/target/wasm32-wasip1/release/sieve.wasm 10000000

mod kernel;

fn main() {
    let n = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 10_000_000,
        Some(Ok(n)) if n <= 1 << 30 => n,
        Some(_) => {
            eprintln!("sieve: the argument is a number up to 2^30");
            std::process::exit(2);
        }
    };
    println!("{}", kernel::count_primes(n));
}
