//! The store and the needs dance over real HTTP.

use reqwest::StatusCode;
use serde_json::{Value, json};
use wasmesh_host::model::HashHex;
use wasmesh_test_support::{TEST_GUEST, guest_bytes};

use crate::Server;
use crate::server::upload_test_guest;

fn error_code(response: reqwest::blocking::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().expect("an error body is JSON");
    (
        status,
        body["error"]["code"]
            .as_str()
            .expect("error.code")
            .to_string(),
    )
}

#[test]
fn the_needs_dance_sends_each_chunk_once() {
    let server = Server::start(&[]);
    let client = server.client();
    let wasm = guest_bytes(TEST_GUEST);
    let module = HashHex::of(&wasm);
    let descriptor = json!({"name": "test-guest", "version": "1.0.0", "module": module});
    let first = client
        .upload_worker(&descriptor, &[(module, &wasm)])
        .unwrap();
    assert_eq!(
        (first.sent_chunks, first.sent_bytes),
        (1, wasm.len() as u64)
    );
    let again = client
        .upload_worker(&descriptor, &[(module, &wasm)])
        .unwrap();
    assert_eq!(again.worker, first.worker);
    assert_eq!(
        (again.sent_chunks, again.sent_bytes),
        (0, 0),
        "a second upload sends no chunk bytes"
    );

    // A different worker over the same module needs no chunk either.
    let renamed = json!({"name": "renamed", "module": module});
    let third = client.upload_worker(&renamed, &[(module, &wasm)]).unwrap();
    assert_ne!(third.worker, first.worker);
    assert_eq!(third.sent_chunks, 0);
    assert_eq!(client.needs(&[module, HashHex::empty()]).unwrap(), vec![]);
}

#[test]
fn blobs_round_trip_and_the_empty_blob_is_always_there() {
    let server = Server::start(&[]);
    let client = server.client();
    let hash = client.put_blob(b"some bytes".to_vec()).unwrap();
    assert_eq!(client.blob(&hash).unwrap(), b"some bytes");
    let head = server
        .http()
        .head(server.at(&format!("/cas/{hash}")))
        .send()
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "10");
    assert_eq!(client.blob(&HashHex::empty()).unwrap(), b"");
    let put_again = server
        .http()
        .put(server.at(&format!("/cas/{hash}")))
        .body("some bytes")
        .send()
        .unwrap();
    assert_eq!(put_again.status(), StatusCode::OK);
    let needs = client.needs(&[hash, HashHex::of(b"absent")]).unwrap();
    assert_eq!(needs, vec![HashHex::of(b"absent")]);
}

#[test]
fn a_hash_mismatch_is_refused_and_nothing_is_stored() {
    let server = Server::start(&[]);
    let claimed = HashHex::of(b"what I claim");
    let response = server
        .http()
        .put(server.at(&format!("/cas/{claimed}")))
        .body("something else")
        .send()
        .unwrap();
    assert_eq!(
        error_code(response),
        (StatusCode::BAD_REQUEST, "hash_mismatch".into())
    );
    let head = server
        .http()
        .head(server.at(&format!("/cas/{claimed}")))
        .send()
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.client().needs(&[claimed]).unwrap(), vec![claimed]);
}

#[test]
fn a_package_with_one_bad_chunk_stores_none_of_them() {
    let server = Server::start(&[]);
    let wasm = guest_bytes(TEST_GUEST);
    let module = HashHex::of(&wasm);
    let data = b"palette".to_vec();
    let lie = HashHex::of(b"not the palette");
    let descriptor = json!({"name": "w", "module": module, "files": {"palette.bin": lie}});
    let form = reqwest::blocking::multipart::Form::new()
        .text("descriptor", descriptor.to_string())
        .part(
            module.to_string(),
            reqwest::blocking::multipart::Part::bytes(wasm),
        )
        .part(
            lie.to_string(),
            reqwest::blocking::multipart::Part::bytes(data),
        );
    let response = server
        .http()
        .post(server.at("/compute/workers"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(
        error_code(response),
        (StatusCode::BAD_REQUEST, "hash_mismatch".into())
    );
    assert_eq!(
        server.client().needs(&[module, lie]).unwrap(),
        vec![module, lie],
        "the good chunk was not stored either"
    );
}

#[test]
fn oversized_blobs_get_413() {
    let server = Server::start(&["--max-blob-bytes", "1KiB"]);
    let big = vec![7u8; 4096];
    let response = server
        .http()
        .put(server.at(&format!("/cas/{}", HashHex::of(&big))))
        .body(big)
        .send()
        .unwrap();
    assert_eq!(
        error_code(response),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    let sysinfo: Value = server
        .http()
        .get(server.at("/compute/sysinfo"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(sysinfo["limits"]["max_blob_bytes"], 1024);
    assert_eq!(
        server.client().put_blob(vec![1u8; 1000]).map(|_| ()).ok(),
        Some(())
    );
}

#[test]
fn bad_hashes_and_malformed_bodies_are_4xx_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    let http = server.http();
    let cases: Vec<(reqwest::blocking::RequestBuilder, StatusCode, &str)> = vec![
        (
            http.get(server.at("/cas/not-a-hash")),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
        ),
        (
            http.get(server.at(&format!("/cas/{}", "A".repeat(64)))),
            StatusCode::BAD_REQUEST,
            "invalid_hash",
        ),
        (
            http.post(server.at("/cas/needs")).body("{\"hashes\": ["),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            http.post(server.at("/cas/needs"))
                .body("{\"hashes\": [\"xyz\"]}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            http.post(server.at("/compute/workers")).body("[1,2"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            http.post(server.at("/compute/workers")).body(""),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            http.post(server.at("/compute/workers"))
                .header("content-type", "multipart/form-data; boundary=XYZ")
                .body("--XYZ\r\nnot a part"),
            StatusCode::BAD_REQUEST,
            "invalid_package",
        ),
        (
            http.post(server.at("/compute/jobs"))
                .body("{\"worker\": 5}"),
            StatusCode::BAD_REQUEST,
            "invalid_descriptor",
        ),
        (
            http.get(server.at("/no/such/route")),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().unwrap();
        assert_eq!(error_code(response), (status, code.to_string()));
    }
    let health: Value = http
        .get(server.at("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "healthy");
    upload_test_guest(&server.client());
}

/// `module` with a custom section of `extra` bytes appended (a valid module still).
fn with_custom_section(module: &[u8], extra: usize) -> Vec<u8> {
    let mut out = module.to_vec();
    let padding = wasm_encoder::CustomSection {
        name: "padding".into(),
        data: vec![0x5au8; extra].into(),
    };
    wasm_encoder::Section::append_to(&padding, &mut out);
    out
}

/// Pins the package the client builds in one buffer (it was reqwest's streamed form)
/// and modules large enough to be mapped rather than read at registration and at
/// their first run: both end in a worker that runs, and a large invalid module is
/// still refused with `invalid_module`.
#[test]
fn a_large_worker_goes_up_in_one_package_and_runs_from_its_mapped_module() {
    let server = Server::start(&[]);
    let client = server.client();
    let wasm = with_custom_section(&guest_bytes(TEST_GUEST), 3 << 20);
    let module = HashHex::of(&wasm);
    let other = vec![7u8; 2 << 20];
    let descriptor = json!({"name": "padded", "module": module});
    let upload = client
        .upload_worker(
            &descriptor,
            &[(module, &wasm), (HashHex::of(&other), &other)],
        )
        .unwrap();
    assert_eq!(
        (upload.sent_chunks, upload.sent_bytes),
        (1, wasm.len() as u64),
        "only the chunk the descriptor names is needed"
    );
    assert_eq!(client.blob(&module).unwrap(), wasm);
    let echo = crate::server::action(&client, upload.worker, &["echo"], Some(b"large"));
    let lsn = client.submit(&echo, None, None).unwrap();
    let result = client.wait(lsn, crate::server::WAIT).unwrap();
    assert_eq!(result.state.as_str(), "succeeded", "{result:?}");
    assert_eq!(client.blob(&result.output).unwrap(), b"large");

    let mut junk = b"\0asm\x01\0\0\0".to_vec();
    junk.resize(2 << 20, 0xff);
    let junk_hash = HashHex::of(&junk);
    let err = client
        .upload_worker(
            &json!({"name": "junk", "module": junk_hash}),
            &[(junk_hash, &junk)],
        )
        .unwrap_err();
    assert_eq!(crate::server::api_code(err), (422, "invalid_module".into()));
}
