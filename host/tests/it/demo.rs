//! `wasmesh demo`: a local cluster renders the tiles on one node, then on two, and
//! writes a valid PNG of the right size.

use wasmesh_test_support::guest_path;

use crate::{err, out, wasmesh};

#[test]
fn demo_renders_on_a_local_cluster_and_writes_a_png() {
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
            "--nodes",
            "2",
        ],
        b"",
    );
    assert_eq!(output.status.code(), Some(0), "{}", err(&output));
    let text = out(&output);
    assert!(text.contains("speed-up with 2 nodes"), "{text}");
    assert!(text.contains("uploading it again sent 0"), "{text}");
    assert!(text.contains("cluster stopped"), "{text}");
    let per_node: Vec<(String, usize)> = text
        .lines()
        .filter_map(|l| l.trim().strip_suffix(" tiles"))
        .map(|l| {
            let (node, count) = l.split_once(": ").unwrap();
            (node.to_string(), count.parse().unwrap())
        })
        .collect();
    // All 16 tiles queued at once: each node gets one as soon as it has a free slot.
    assert_eq!(per_node.len(), 2, "{text}");
    assert_eq!(per_node.iter().map(|(_, n)| n).sum::<usize>(), 16);
    assert!(per_node.iter().all(|(_, n)| *n > 0), "{text}");

    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (128, 128));
}
