//! `wasmesh demo`: renders the tiles and writes a valid PNG of the right size.

use wasmesh_test_support::guest_path;

use crate::{err, out, wasmesh};

#[test]
fn demo_writes_a_png_and_reports_slots() {
    let dir = tempfile::tempdir().unwrap();
    let png_path = dir.path().join("m.png");
    let output = wasmesh(
        &[
            "demo",
            "--module",
            guest_path("mandelbrot").to_str().unwrap(),
            "--out",
            png_path.to_str().unwrap(),
            "--size",
            "128",
            "--max-iter",
            "50",
            "--slots",
            "2",
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(0), "{}", err(&output));
    assert!(out(&output).contains("speed-up"), "{}", out(&output));
    let tiles: usize = out(&output)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("slot "))
        .map(|l| {
            l.split(": ")
                .nth(1)
                .unwrap()
                .trim_end_matches(" tiles")
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(tiles, 16);

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (128, 128));
}
