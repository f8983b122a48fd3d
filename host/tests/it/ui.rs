//! The dashboard's server side: the page and its assets at `/ui`, and the login that
//! trades a key for an `HttpOnly` session cookie the API accepts.

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::Server;
use crate::tenants::two_tenants;

fn session_cookie(response: &reqwest::blocking::Response) -> String {
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    cookie.split(';').next().unwrap().to_string()
}

#[test]
fn the_page_is_served_under_every_ui_path_with_a_strict_policy() {
    let server = Server::start(&[]);
    let http = Client::new();
    for path in ["/ui", "/ui/", "/ui/jobs/42", "/ui/queues"] {
        let page = http.get(server.at(path)).send().unwrap();
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        let html = page.text().unwrap();
        assert!(html.contains("/ui/assets/app.js"), "{path}");
    }
    let script = http.get(server.at("/ui/assets/app.js")).send().unwrap();
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.text().unwrap().contains("/compute/events"));
    let missing = http.get(server.at("/ui/assets/nope.js")).send().unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // Without keys the page just opens: everyone is the default tenant's operator.
    let whoami: Value = http
        .get(server.at("/ui/session"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        whoami,
        json!({"tenant": "default", "role": "operator", "keys_required": false})
    );
}

#[test]
fn a_login_trades_a_key_for_a_session_cookie_the_api_accepts_until_logout() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = two_tenants(dir.path());
    let server = Server::start(&["--tenants", tenants.to_str().unwrap()]);
    let http = Client::new();
    let login = |key: &str| {
        http.post(server.at("/ui/login"))
            .json(&json!({"key": key}))
            .send()
            .unwrap()
    };
    assert_eq!(
        login("wrong-key-0123456789").status(),
        StatusCode::UNAUTHORIZED
    );
    let malformed = http
        .post(server.at("/ui/login"))
        .header("content-type", "application/json")
        .body("{\"key\": 3}")
        .send()
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let answer = login("acme-key-0123456789");
    assert_eq!(answer.status(), StatusCode::OK);
    let cookie = session_cookie(&answer);
    let body: Value = answer.json().unwrap();
    assert_eq!(body["tenant"], "acme");
    assert_eq!(body["role"], "tenant");
    assert!(!cookie.contains("acme-key"), "the key is not the cookie");

    let with_cookie = |path: &str| {
        http.get(server.at(path))
            .header("cookie", &cookie)
            .send()
            .unwrap()
    };
    assert_eq!(with_cookie("/compute/jobs").status(), StatusCode::OK);
    let whoami: Value = with_cookie("/ui/session").json().unwrap();
    assert_eq!(whoami["tenant"], "acme");
    let feed = http
        .get(server.at("/compute/events"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(
        feed.status(),
        StatusCode::OK,
        "the feed takes the cookie too"
    );
    drop(feed);
    // A key, when one comes, is what counts: a wrong one is nobody, cookie or not.
    let wrong_key = |path: &str| {
        http.get(server.at(path))
            .header("cookie", &cookie)
            .header("x-api-key", "wrong-key-0123456789")
            .send()
            .unwrap()
    };
    assert_eq!(
        wrong_key("/compute/jobs").status(),
        StatusCode::UNAUTHORIZED
    );
    let nobody: Value = wrong_key("/ui/session").json().unwrap();
    assert!(nobody["tenant"].is_null(), "{nobody}");
    // A made-up session is nobody.
    let forged = http
        .get(server.at("/compute/jobs"))
        .header("cookie", format!("wasmesh_session={}", "ab".repeat(32)))
        .send()
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    let out = http
        .post(server.at("/ui/logout"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        with_cookie("/compute/jobs").status(),
        StatusCode::UNAUTHORIZED,
        "logged out"
    );
    let nobody: Value = with_cookie("/ui/session").json().unwrap();
    assert_eq!(
        nobody,
        json!({"tenant": null, "role": null, "keys_required": true})
    );
}
