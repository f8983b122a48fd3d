//! `GET /compute/jobs`: a tenant's jobs newest first, filtered, a page at a time.

use reqwest::Method;
use serde_json::{Value, json};

use wasmesh_host::model::HashHex;

use crate::Server;
use crate::server::{WAIT, action, upload_test_guest};
use crate::tenants::two_tenants;

const ADMIN: &str = "admin-key-0123456789";

fn lsns(page: &Value) -> Vec<u64> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["lsn"].as_u64().unwrap())
        .collect()
}

#[test]
fn jobs_are_listed_newest_first_filtered_and_paged_for_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = two_tenants(dir.path());
    // A lone node's operator comes from its tenants file.
    let mut file = std::fs::read_to_string(&tenants).unwrap();
    file.push_str(&format!(
        "ops = {{ keys = [\"{ADMIN}\"], role = \"operator\" }}\n"
    ));
    std::fs::write(&tenants, file).unwrap();
    let server = Server::start(&["--tenants", tenants.to_str().unwrap()]);
    let acme = server.client_with_key("acme-key-0123456789");
    let worker = upload_test_guest(&acme);
    let queue = acme
        .call(
            Method::POST,
            "/compute/queues",
            Some(&json!({"max_retries": 0})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap();
    let q = queue.to_string();
    let mut ok = Vec::new();
    for i in 0..4 {
        let args = ["args", &format!("{i}")];
        ok.push(
            acme.submit(&action(&acme, worker, &args, None), Some(&q), None)
                .unwrap(),
        );
    }
    let failed = acme
        .submit(
            &action(&acme, worker, &["panic", "boom"], None),
            Some(&q),
            None,
        )
        .unwrap();
    let loose = acme
        .submit(&action(&acme, worker, &["noop"], None), None, None)
        .unwrap();
    for lsn in ok.iter().chain([&failed, &loose]) {
        acme.wait(*lsn, WAIT).unwrap();
    }
    let globex = server.client_with_key("globex-key-0123456789");
    let theirs = upload_test_guest(&globex);
    assert_eq!(theirs, worker, "the same module is the same worker");
    let their_lsn = globex
        .submit(
            &action(&globex, theirs, &["echo"], Some(b"globex's output")),
            None,
            None,
        )
        .unwrap();
    globex.wait(their_lsn, WAIT).unwrap();

    // Everything of acme's, newest first, in pages of 4.
    let first = acme
        .call(Method::GET, "/compute/jobs?limit=4", None)
        .unwrap();
    let mut all = lsns(&first);
    let next = first["next"].as_u64().expect("more after a full page");
    let second = acme
        .call(
            Method::GET,
            &format!("/compute/jobs?limit=4&before={next}"),
            None,
        )
        .unwrap();
    assert!(second["next"].is_null(), "{second}");
    all.extend(lsns(&second));
    let mut expected: Vec<u64> = ok.iter().copied().chain([failed, loose]).collect();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(all, expected, "acme's jobs only, newest first");
    let row = &first["jobs"][0];
    assert_eq!(row["lsn"], loose);
    assert_eq!(row["state"], "succeeded");
    assert_eq!(row["tenant"], "acme");
    assert_eq!(row["worker"], worker.to_string());
    assert!(
        row["node"].is_string() && row["created_ms"].is_i64(),
        "{row}"
    );

    // Filters.
    let list = |query: &str| {
        acme.call(Method::GET, &format!("/compute/jobs?{query}"), None)
            .unwrap()
    };
    assert_eq!(lsns(&list("state=failed")), [failed]);
    assert_eq!(list("state=failed")["jobs"][0]["outcome"], "trapped");
    let in_queue = lsns(&list(&format!("queue={queue}")));
    assert_eq!(in_queue.len(), 5);
    assert!(!in_queue.contains(&loose));
    assert_eq!(
        lsns(&list(&format!("queue={queue}&state=succeeded"))).len(),
        4
    );
    assert_eq!(lsns(&list("outcome=trapped")), [failed]);
    assert_eq!(lsns(&list(&format!("worker={worker}"))).len(), 6);
    let node = acme.call(Method::GET, "/compute/sysinfo", None).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(lsns(&list(&format!("node={node}"))).len(), 6);
    assert!(lsns(&list("node=elsewhere")).is_empty());
    let other_worker = HashHex::of(b"no such worker");
    assert!(lsns(&list(&format!("worker={other_worker}"))).is_empty());

    // The operator sees every tenant's.
    let operator = server.client_with_key(ADMIN);
    let every = operator
        .call(Method::GET, "/compute/jobs?limit=500", None)
        .unwrap();
    let every = every["jobs"].as_array().unwrap().clone();
    assert!(
        every
            .iter()
            .any(|j| j["tenant"] == "globex" && j["lsn"] == their_lsn)
    );
    assert!(every.iter().any(|j| j["tenant"] == "acme"));
    // The operator opens any tenant's job (not its output's bytes); a tenant only its own.
    let their_job = operator
        .call(Method::GET, &format!("/compute/jobs/{their_lsn}"), None)
        .unwrap();
    assert_eq!(their_job["state"], "succeeded", "{their_job}");
    let output: HashHex = serde_json::from_value(their_job["output"].clone()).unwrap();
    let (status, _) = crate::server::api_code(operator.blob(&output).unwrap_err());
    assert_eq!(
        status, 404,
        "the operator reads the job, not the tenant's bytes"
    );
    let (status, _) = crate::server::api_code(
        acme.call(Method::GET, &format!("/compute/jobs/{their_lsn}"), None)
            .unwrap_err(),
    );
    assert_eq!(status, 404, "another tenant's job does not exist for acme");
    // A tenant never sees another's.
    let theirs_only = globex.call(Method::GET, "/compute/jobs", None).unwrap();
    assert_eq!(lsns(&theirs_only), [their_lsn]);

    // Queues, with their jobs counted.
    let queues = acme.call(Method::GET, "/compute/queues", None).unwrap();
    let listed = &queues["queues"][0];
    assert_eq!(listed["queue_id"], queue, "{queues}");
    assert_eq!(listed["state"], "active");
    assert_eq!(listed["counts"]["succeeded"], 4);
    assert_eq!(listed["counts"]["failed"], 1);
    assert_eq!(listed["counts"]["queued"], 0);
    assert!(
        listed["oldest_queued_ms"].is_null(),
        "nothing waits: {listed}"
    );
    assert!(queues["next"].is_null());
    let none = globex.call(Method::GET, "/compute/queues", None).unwrap();
    assert_eq!(
        none["queues"],
        json!([]),
        "another tenant's queues are not listed"
    );
    let every = operator.call(Method::GET, "/compute/queues", None).unwrap();
    assert_eq!(every["queues"][0]["tenant"], "acme");

    // Bad parameters are 400s in the contract's error shape.
    for query in [
        "jobs?state=done",
        "jobs?before=-1",
        "jobs?limit=many",
        "jobs?worker=xyz",
        "queues?before=x",
    ] {
        let answer = server
            .http()
            .get(server.at(&format!("/compute/{query}")))
            .header("x-api-key", "acme-key-0123456789")
            .send()
            .unwrap();
        assert_eq!(answer.status(), 400, "{query}");
        let body: Value = answer.json().unwrap();
        assert!(body["error"]["code"].is_string(), "{query}: {body}");
    }
}
