//! The Mandelbrot kernel, shared by the wasm job and the native baseline in the
//! runtime's benchmarks (which include this file by path), so both run the same code.

/// The region of the complex plane the whole image shows: real part from `LEFT`, imaginary
/// part from `TOP`, both spanning `SPAN`.
const LEFT: f64 = -2.5;
const TOP: f64 = -1.75;
const SPAN: f64 = 3.5;

/// Renders the `size` x `size` tile whose top-left pixel is (`x`, `y`) of an
/// `image_size` x `image_size` image, one grey byte per pixel, row by row: 0 inside the
/// set, brighter the faster a point escapes.
pub fn render_tile(x: u32, y: u32, size: u32, image_size: u32, max_iter: u32) -> Vec<u8> {
    let scale = SPAN / f64::from(image_size);
    let mut pixels = Vec::with_capacity((size as usize) * (size as usize));
    for row in y..y + size {
        let ci = TOP + f64::from(row) * scale;
        for column in x..x + size {
            let cr = LEFT + f64::from(column) * scale;
            let (mut zr, mut zi, mut i) = (0.0f64, 0.0f64, 0u32);
            while i < max_iter && zr * zr + zi * zi <= 4.0 {
                let next = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = next;
                i += 1;
            }
            pixels.push(if i >= max_iter {
                0
            } else {
                (f64::from(i) / f64::from(max_iter))
                    .sqrt()
                    .mul_add(254.0, 1.0) as u8
            });
        }
    }
    pixels
}
