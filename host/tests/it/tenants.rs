//! Tenants never see each other: another tenant's things are 404, not 403.

use reqwest::StatusCode;
use serde_json::json;

use crate::Server;
use crate::server::{WAIT, action, upload_test_guest};

fn status(error: wasmesh_host::client::ClientError) -> u16 {
    crate::server::api_code(error).0
}

/// Writes a tenants file with `acme` and `globex` (keys `<name>-key-0123456789`).
pub fn two_tenants(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tenants.toml");
    std::fs::write(
        &path,
        "acme = [\"acme-key-0123456789\"]\nglobex = [\"globex-key-0123456789\"]\n",
    )
    .unwrap();
    path
}

#[test]
fn tenants_are_isolated_and_keys_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.toml");
    std::fs::write(
        &tenants,
        "acme = [\"acme-key-0123456789\"]\nglobex = { keys = [\"globex-key-0123456789\"] }\n",
    )
    .unwrap();
    let server = Server::start(&["--tenants", tenants.to_str().unwrap()]);
    let acme = server.client_with_key("acme-key-0123456789");
    let globex = server.client_with_key("globex-key-0123456789");

    let health = server.http().get(server.at("/health")).send().unwrap();
    assert_eq!(health.status(), StatusCode::OK, "health needs no key");
    // Readiness neither (the deployment artefacts' probes send none): a regression test
    // for the Kubernetes and Nomad probes that got 401 while it wanted a key.
    let ready = server
        .http()
        .get(server.at("/compute/ready"))
        .send()
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "readiness needs no key");
    for key in [None, Some("wrong-key-0123456789")] {
        let mut request = server.http().get(server.at("/compute/workers"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        assert_eq!(request.send().unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let bearer = server
        .http()
        .get(server.at("/compute/workers"))
        .bearer_auth("acme-key-0123456789")
        .send()
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);

    let worker = upload_test_guest(&acme);
    let lsn = acme
        .submit(
            &action(&acme, worker, &["echo"], Some(b"acme secret")),
            None,
            None,
        )
        .unwrap();
    let result = acme.wait(lsn, WAIT).unwrap();
    assert_eq!(acme.blob(&result.output).unwrap(), b"acme secret");

    assert_eq!(status(globex.result(lsn).unwrap_err()), 404);
    assert_eq!(status(globex.blob(&result.output).unwrap_err()), 404);
    assert_eq!(
        globex.needs(&[result.output]).unwrap(),
        vec![result.output],
        "globex does not hold acme's blob"
    );
    assert_eq!(
        status(
            globex
                .call(
                    reqwest::Method::GET,
                    &format!("/compute/workers/{worker}"),
                    None
                )
                .unwrap_err()
        ),
        404
    );
    assert_eq!(
        globex
            .call(reqwest::Method::GET, "/compute/workers", None)
            .unwrap(),
        json!({"workers": []})
    );
    assert_eq!(
        status(
            globex
                .submit(&json!({"worker": worker}), None, None)
                .unwrap_err()
        ),
        404
    );
    assert_eq!(
        status(
            globex
                .call(
                    reqwest::Method::POST,
                    &format!("/compute/jobs/{lsn}/cancel"),
                    None
                )
                .unwrap_err()
        ),
        404
    );
    let queue = acme
        .call(
            reqwest::Method::POST,
            "/compute/queues/remote",
            Some(&json!({})),
        )
        .unwrap();
    let token = queue["queue_token"].as_str().unwrap();
    assert_eq!(status(globex.queue(token).unwrap_err()), 404);
    assert_eq!(
        acme.call(reqwest::Method::GET, "/compute/jobs/completed", None)
            .unwrap()["completed"],
        json!([lsn])
    );
    assert_eq!(
        globex
            .call(reqwest::Method::GET, "/compute/jobs/completed", None)
            .unwrap()["completed"],
        json!([])
    );
}

#[test]
fn tenants_sharing_a_fleet_do_not_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = two_tenants(dir.path());
    let coordinator = Server::coordinator(&[
        "--tenants",
        tenants.to_str().unwrap(),
        "--node-key",
        "node-secret-0123456789",
        "--heartbeat-interval",
        "100ms",
    ]);
    let _node = Server::start(&[
        "--coordinator",
        &coordinator.url,
        "--node-id",
        "shared",
        "--node-key",
        "node-secret-0123456789",
    ]);
    let acme = coordinator.client_with_key("acme-key-0123456789");
    let globex = coordinator.client_with_key("globex-key-0123456789");
    let worker = upload_test_guest(&acme);
    let lsn = acme
        .submit(
            &action(&acme, worker, &["echo"], Some(b"acme's secret")),
            None,
            None,
        )
        .unwrap();
    let result = acme.wait(lsn, WAIT).unwrap();
    assert_eq!(result.node, "shared");
    assert_eq!(acme.blob(&result.output).unwrap(), b"acme's secret");
    // The other tenant on the same coordinator and node: nothing of acme's exists.
    assert_eq!(status(globex.result(lsn).unwrap_err()), 404);
    assert_eq!(status(globex.blob(&result.output).unwrap_err()), 404);
    assert_eq!(
        status(
            globex
                .submit(&json!({"worker": worker}), None, None)
                .unwrap_err()
        ),
        404,
        "acme's worker is not globex's"
    );
}
