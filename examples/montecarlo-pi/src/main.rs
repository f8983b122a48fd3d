//! Estimates pi from N seeded random samples, reporting progress and checkpointing every K
//! samples so a retried run resumes where the last one stopped, with the same answer.
//! Run: echo '{"samples":1000000,"seed":7,"checkpoint_every":100000}' | wasmesh exec examples/target/wasm32-wasip1/release/montecarlo-pi.wasm

use serde::{Deserialize, Serialize};
use wasmesh_guest::{Error, Json, bail, checkpoint, job, log, progress};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    samples: u64,
    seed: u64,
    #[serde(default = "default_every")]
    checkpoint_every: u64,
}

fn default_every() -> u64 {
    1_000_000
}

/// Everything needed to continue exactly where a run stopped.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct State {
    seed: u64,
    samples: u64,
    done: u64,
    inside: u64,
    rng: u64,
}

#[derive(Serialize)]
struct Output {
    samples: u64,
    inside: u64,
    pi: f64,
    /// The sample this run resumed from (0: it started fresh).
    resumed_from: u64,
}

/// SplitMix64: tiny, fast and fully determined by its state, so a checkpoint of one
/// `u64` resumes the exact stream.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform float in [0, 1) from the top 53 bits.
fn unit(state: &mut u64) -> f64 {
    (next(state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[job]
fn run(Json(input): Json<Input>) -> Result<Json<Output>, Error> {
    if input.samples == 0 {
        bail!("samples must be at least 1");
    }
    let every = input.checkpoint_every.max(1);
    let fresh = State {
        seed: input.seed,
        samples: input.samples,
        done: 0,
        inside: 0,
        rng: input.seed,
    };
    let mut resumed_from = 0;
    let mut state = match checkpoint::load_json::<State>()? {
        // A checkpoint of another job (other seed or size) is ignored, not trusted.
        Some(saved)
            if saved.seed == input.seed
                && saved.samples == input.samples
                && saved.done <= input.samples =>
        {
            log!("resuming from sample {}", saved.done);
            resumed_from = saved.done;
            saved
        }
        _ => fresh,
    };
    while state.done < state.samples {
        let batch = every.min(state.samples - state.done);
        for _ in 0..batch {
            let (x, y) = (unit(&mut state.rng), unit(&mut state.rng));
            if x * x + y * y < 1.0 {
                state.inside += 1;
            }
        }
        state.done += batch;
        checkpoint::save_json(&state)?;
        progress(state.done as f64 / state.samples as f64);
    }
    Ok(Json(Output {
        samples: state.samples,
        inside: state.inside,
        pi: 4.0 * state.inside as f64 / state.samples as f64,
        resumed_from,
    }))
}
