//! Renders one tile of the Mandelbrot set as grey bytes (the demo assembles 16 into a PNG).
//! Run: echo '{"x":0,"y":0,"size":64,"image_size":256,"max_iter":200}' | wasmesh exec examples/target/wasm32-wasip1/release/mandelbrot.wasm > tile.raw

mod kernel;

use serde::Deserialize;
use wasmesh_guest::{Error, Json, bail, job};

/// One tile: its top-left pixel, its edge, the whole image's edge, and the iteration cap.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tile {
    x: u32,
    y: u32,
    size: u32,
    image_size: u32,
    max_iter: u32,
}

/// Largest tile edge: 4096² bytes is 16 MiB of output, the default output limit.
const MAX_TILE: u32 = 4096;

#[job]
fn run(Json(tile): Json<Tile>) -> Result<Vec<u8>, Error> {
    if tile.size == 0 || tile.size > MAX_TILE {
        bail!("size must be 1..={MAX_TILE}, got {}", tile.size);
    }
    if tile.max_iter == 0 || tile.max_iter > 1_000_000 {
        bail!("max_iter must be 1..=1000000, got {}", tile.max_iter);
    }
    let fits = |start: u32| {
        start
            .checked_add(tile.size)
            .is_some_and(|end| end <= tile.image_size)
    };
    if !fits(tile.x) || !fits(tile.y) {
        bail!(
            "the tile at ({}, {}) of size {} does not fit in a {}-pixel image",
            tile.x,
            tile.y,
            tile.size,
            tile.image_size
        );
    }
    Ok(kernel::render_tile(
        tile.x,
        tile.y,
        tile.size,
        tile.image_size,
        tile.max_iter,
    ))
}
