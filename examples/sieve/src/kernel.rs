//! The sieve of Eratosthenes over bytes: an integer and memory kernel (the benchmarks
//! include this file natively too, so native and wasm run the very same source).

/// How many primes are at most `n`.
pub fn count_primes(n: usize) -> usize {
    if n < 2 {
        return 0;
    }
    let mut composite = vec![false; n + 1];
    let mut count = 0;
    for i in 2..=n {
        if composite[i] {
            continue;
        }
        count += 1;
        let mut multiple = i.saturating_mul(i);
        while multiple <= n {
            composite[multiple] = true;
            multiple += i;
        }
    }
    count
}
