//! Retention: finished results leave the completed lists after `--result-retention`
//! on their own, and stay readable by LSN.

use serde_json::Value;

use crate::Server;
use crate::server::{WAIT, eventually, submit, upload_test_guest};

#[test]
fn finished_results_are_retired_after_their_retention() {
    let server = Server::start(&["--result-retention", "1s"]);
    let client = server.client();
    let worker = upload_test_guest(&client);
    let lsn = submit(&client, worker, &["noop"]);
    client.wait(lsn, WAIT).unwrap();
    let completed = |client: &wasmesh_host::client::Client| -> Vec<Value> {
        client
            .call(reqwest::Method::GET, "/compute/jobs/completed", None)
            .unwrap()["completed"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        completed(&client).contains(&lsn.into()),
        "listed while it is fresh"
    );
    eventually(WAIT, || completed(&client).is_empty().then_some(()));
    let result = client.result(lsn).unwrap().expect("still readable by LSN");
    assert_eq!(result.state, "succeeded");
    let metrics = server.metrics(None);
    assert!(
        metrics.contains("wasmesh_results_retired_total 1"),
        "{metrics}"
    );
}
