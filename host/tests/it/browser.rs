//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver) against the real binary: log in, every page renders without a console
//! error, counts move without a reload when jobs are submitted through the API, a
//! killed node turns unhealthy, a tenant never sees another's jobs, and a job's page
//! shows its real output. Screenshots of the main pages land in
//! `target/ui-screenshots/`. `scripts/test.sh` installs Debian's `chromium` and
//! `chromium-driver` when they are missing.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{Value, json};

use crate::Server;
use crate::server::{WAIT, action, eventually, upload_test_guest};
use crate::tenants::two_tenants;

const ADMIN: &str = "admin-key-0123456789";
const NODE_KEY: &str = "node-secret-0123456789";
const ACME: &str = "acme-key-0123456789";
const GLOBEX: &str = "globex-key-0123456789";

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        eventually(WAIT, || {
            let ready = reqwest::blocking::get(&status).ok()?.json::<Value>().ok()?;
            (ready["value"]["ready"] == true).then_some(())
        });
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("starting headless Chromium")
}

/// The page's console errors since the last look (chromedriver's log endpoint).
async fn console_errors(driver: &Driver, client: &Client) -> Vec<String> {
    let session = client.session_id().await.unwrap().expect("a session");
    let logs: Value = reqwest::Client::new()
        .post(format!("{}/session/{session}/se/log", driver.url))
        .json(&json!({"type": "browser"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    logs["value"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["level"] == "SEVERE")
        .map(|entry| entry["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the text of the first element matching `css` satisfies `wanted`.
async fn until_text(client: &Client, css: &str, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if wanted(&text) {
                return text;
            }
            last = text;
        }
        assert!(Instant::now() < deadline, "{css}: still {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a page is opened with: the driver (for its log), the browser, the server.
struct Ui<'a> {
    driver: &'a Driver,
    client: &'a Client,
    server: &'a Server,
}

/// Opens `path` the way a user does (the address bar), waits for its heading, checks
/// the console and saves a screenshot named `shot`.
async fn open(ui: &Ui<'_>, path: &str, heading: &str, shot: &str) {
    ui.client.goto(&ui.server.at(path)).await.unwrap();
    until_text(ui.client, "main h1", |t| t == heading).await;
    let errors = console_errors(ui.driver, ui.client).await;
    assert!(errors.is_empty(), "{path}: console errors {errors:?}");
    let png = ui.client.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{shot}.png")), png).unwrap();
}

/// The runtime a browser session is driven on (blocking client calls go to its
/// blocking pool through [`blocking`]).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs blocking client code (the API client, killing a process) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn log_in(client: &Client, server: &Server, key: &str) {
    client.goto(&server.at("/ui")).await.unwrap();
    let field = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#key"))
        .await
        .unwrap();
    // The dialog opens once the page found it needs a key.
    until_text(client, "#login h2", |t| t == "Log in").await;
    field.send_keys(key).await.unwrap();
    client
        .find(Locator::Css("#login-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until_text(client, "#who", |t| !t.is_empty()).await;
}

#[test]
fn the_dashboard_shows_the_fleet_and_each_tenants_jobs_live_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = two_tenants(dir.path());
    let coordinator = Server::coordinator(&[
        "--tenants",
        tenants.to_str().unwrap(),
        "--admin-key",
        ADMIN,
        "--node-key",
        NODE_KEY,
        "--heartbeat-interval",
        "100ms",
    ]);
    let node = Server::start(&[
        "--coordinator",
        &coordinator.url,
        "--node-id",
        "ui-node",
        "--node-key",
        NODE_KEY,
        "--slots",
        "2",
    ]);
    let acme = coordinator.client_with_key(ACME);
    let worker = upload_test_guest(&acme);
    let queue = acme
        .call(
            Method::POST,
            "/compute/queues",
            Some(&json!({"name": "renders"})),
        )
        .unwrap()["queue_id"]
        .as_u64()
        .unwrap();
    let echo = acme
        .submit(
            &action(
                &acme,
                worker,
                &["echo"],
                Some(b"hello from the browser test"),
            ),
            None,
            None,
        )
        .unwrap();
    acme.wait(echo, WAIT).unwrap();
    let dependent = acme
        .submit(
            &json!({"worker": worker, "args": ["noop"], "after": [echo]}),
            None,
            None,
        )
        .unwrap();
    acme.wait(dependent, WAIT).unwrap();
    let group = json!({
        "name": "alerts",
        "handlers": [{"name": "check", "worker": worker}],
        "routes": [{"from": "_external", "to": "check", "event_types": ["Temp*"]}],
    });
    acme.call(Method::POST, "/api/v1/cluster/groups", Some(&group))
        .unwrap();
    let globex = coordinator.client_with_key(GLOBEX);
    let their_worker = upload_test_guest(&globex);
    let theirs = globex
        .submit(&action(&globex, their_worker, &["noop"], None), None, None)
        .unwrap();
    globex.wait(theirs, WAIT).unwrap();

    let driver = Driver::start();
    runtime().block_on(async {
        let client = browser(&driver).await;
        let ui = Ui {
            driver: &driver,
            client: &client,
            server: &coordinator,
        };
        log_in(&client, &coordinator, ACME).await;
        until_text(&client, "#who", |t| t == "acme (tenant)").await;
        until_text(&client, "#live", |t| t == "live").await;

        // Every page renders, with no console error.
        open(&ui, "/ui", "Overview", "overview").await;
        open(&ui, "/ui/queues", "Queues", "queues").await;
        open(&ui, "/ui/jobs", "Jobs", "jobs").await;
        open(
            &ui,
            &format!("/ui/jobs/{echo}"),
            &format!("Job #{echo}"),
            "job",
        )
        .await;
        // The job's page shows its real output.
        until_text(&client, "main pre", |t| t == "hello from the browser test").await;
        // Its attempts, and its neighbours as links both ways.
        until_text(&client, "main tr[data-attempt=\"1\"]", |t| {
            t.contains("ui-node") && t.contains("exited") && t.contains("final")
        })
        .await;
        client
            .find(Locator::Css(&format!(
                "main a[href=\"/ui/jobs/{dependent}\"]"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until_text(&client, "main h1", |t| t == format!("Job #{dependent}")).await;
        until_text(&client, &format!("main a[href=\"/ui/jobs/{echo}\"]"), |t| {
            t == format!("#{echo}")
        })
        .await;
        assert!(console_errors(&driver, &client).await.is_empty());
        // The other pages render too; a group's routing is drawn.
        open(&ui, "/ui/workers", "Workers", "workers").await;
        until_text(&client, "main td.mono", |t| {
            worker.to_string().starts_with(t)
        })
        .await;
        open(&ui, "/ui/webhooks", "Webhooks", "webhooks").await;
        open(&ui, "/ui/usage", "Usage", "usage").await;
        until_text(&client, "main td.mono", |t| t == "acme").await;
        open(&ui, "/ui/groups", "Handler groups", "groups").await;
        until_text(
            &client,
            "main svg[aria-label=\"routing of group alerts\"]",
            |t| t.contains("external events") && t.contains("check") && t.contains("Temp*"),
        )
        .await;

        // A tenant never sees another's jobs.
        open(&ui, "/ui/jobs", "Jobs", "jobs").await;
        until_text(&client, &format!("tr[data-lsn=\"{echo}\"]"), |t| {
            t.contains("succeeded")
        })
        .await;
        assert!(
            client
                .find(Locator::Css(&format!("tr[data-lsn=\"{theirs}\"]")))
                .await
                .is_err(),
            "globex's job is on acme's page"
        );

        // Jobs submitted through the API move the counts without a reload.
        open(&ui, "/ui/queues", "Queues", "queues").await;
        let cell = format!("tr[data-queue=\"{queue}\"] td[data-count=\"succeeded\"]");
        until_text(&client, &cell, |t| t == "0").await;
        let marker = client
            .execute("window.notReloaded = true; return true;", vec![])
            .await
            .unwrap();
        assert_eq!(marker, json!(true));
        let q = queue.to_string();
        let api = acme.clone();
        let lsns: Vec<u64> = blocking(move || {
            (0..3)
                .map(|i| {
                    let job = action(&api, worker, &["args", &i.to_string()], None);
                    api.submit(&job, Some(&q), None).unwrap()
                })
                .collect()
        })
        .await;
        until_text(&client, &cell, |t| t == "3").await;
        // The job list shows them too, live.
        client
            .find(Locator::Css("nav a[href=\"/ui/jobs\"]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until_text(&client, "main h1", |t| t == "Jobs").await;
        for lsn in &lsns {
            until_text(
                &client,
                &format!("tr[data-lsn=\"{lsn}\"] [data-field=\"state\"]"),
                |t| t == "succeeded",
            )
            .await;
        }
        // The Overview's running count moves while a job runs.
        client
            .find(Locator::Css("nav a[href=\"/ui\"]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until_text(&client, "[data-card=\"running\"] .n", |t| t == "0").await;
        let api = acme.clone();
        let sleeper = blocking(move || {
            let job = action(&api, worker, &["sleep", "60000"], None);
            api.submit(&job, None, None).unwrap()
        })
        .await;
        until_text(&client, "[data-card=\"running\"] .n", |t| t == "1").await;
        assert_eq!(
            client
                .execute("return window.notReloaded === true;", vec![])
                .await
                .unwrap(),
            json!(true),
            "the page was reloaded"
        );
        let api = acme.clone();
        blocking(move || api.cancel(sleeper).unwrap()).await;
        until_text(&client, "[data-card=\"running\"] .n", |t| t == "0").await;
        assert!(console_errors(&driver, &client).await.is_empty());

        // The operator sees the fleet; a killed node turns unhealthy on the Nodes page.
        client
            .find(Locator::Css("#logout"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        log_in(&client, &coordinator, ADMIN).await;
        open(&ui, "/ui/nodes", "Nodes", "nodes").await;
        let state = "tr[data-node=\"ui-node\"] td:nth-child(2)";
        until_text(&client, state, |t| t == "ready" || t == "busy").await;
        // The autoscaler's standing (static here: it reports and does not scale).
        until_text(&client, "main section[data-autoscaler=\"static\"]", |t| {
            // Idle: the work wants no node (min 0), one is there.
            t.contains("Autoscaler (static)") && t.contains("Wants 0 nodes; 1 ready or starting")
        })
        .await;
        // The node's page: its recent jobs, and why each was placed there.
        client
            .find(Locator::Css("tr[data-node=\"ui-node\"] a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until_text(&client, "main h1", |t| t == "Node ui-node").await;
        until_text(
            &client,
            &format!("main tr:has(a[href=\"/ui/jobs/{echo}\"])"),
            |t| t.contains("acme") && t.contains("capacity"),
        )
        .await;
        assert!(console_errors(&driver, &client).await.is_empty());
        open(&ui, "/ui/nodes", "Nodes", "nodes").await;
        blocking(move || node.kill()).await;
        until_text(&client, state, |t| t == "unhealthy").await;
        assert!(console_errors(&driver, &client).await.is_empty());

        // Keyboard: the first Tab reaches the skip link, which moves focus to the page.
        open(&ui, "/ui/jobs", "Jobs", "jobs").await;
        let focused = client
            .execute(
                "document.body.focus(); return document.activeElement.tagName;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(focused, json!("BODY"));
        client
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .send_keys("\u{E004}")
            .await
            .unwrap();
        let skip = client
            .execute("return document.activeElement.className;", vec![])
            .await
            .unwrap();
        assert_eq!(skip, json!("skip"), "Tab first reaches the skip link");
        client
            .find(Locator::Css("a.skip"))
            .await
            .unwrap()
            .send_keys("\u{E007}")
            .await
            .unwrap();
        let main = client
            .execute("return document.activeElement.id;", vec![])
            .await
            .unwrap();
        assert_eq!(
            main,
            json!("main"),
            "Enter on the skip link focuses the page"
        );

        // A phone-width window: nothing wider than the screen, the table scrolls in
        // its own box.
        client.set_window_size(390, 844).await.unwrap();
        open(&ui, "/ui/jobs", "Jobs", "jobs-phone").await;
        let fits = client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(fits, json!(true), "the page is wider than a phone's screen");
        client.close().await.unwrap();
    });
}

/// A lone node serves the same dashboard; without keys it opens at once, and the fleet
/// pages (nodes, groups) are not offered.
#[test]
fn a_lone_node_serves_the_dashboard_live_without_a_login() {
    let node = Server::start(&[]);
    let api = node.client();
    let worker = upload_test_guest(&api);
    let driver = Driver::start();
    runtime().block_on(async {
        let client = browser(&driver).await;
        let ui = Ui {
            driver: &driver,
            client: &client,
            server: &node,
        };
        open(&ui, "/ui", "Overview", "node-overview").await;
        until_text(&client, "#who", |t| t == "default (operator)").await;
        until_text(&client, "#live", |t| t == "live").await;
        for link in ["/ui/nodes", "/ui/groups"] {
            let shown = client
                .find(Locator::Css(&format!("nav a[href=\"{link}\"]")))
                .await
                .unwrap()
                .is_displayed()
                .await
                .unwrap();
            assert!(!shown, "{link} is offered on a lone node");
        }
        assert!(
            !client
                .find(Locator::Css("#logout"))
                .await
                .unwrap()
                .is_displayed()
                .await
                .unwrap()
        );
        open(&ui, "/ui/jobs", "Jobs", "node-jobs").await;
        let lsn = blocking(move || {
            let job = action(&api, worker, &["echo"], Some(b"from a lone node"));
            api.submit(&job, None, None).unwrap()
        })
        .await;
        until_text(
            &client,
            &format!("tr[data-lsn=\"{lsn}\"] [data-field=\"state\"]"),
            |t| t == "succeeded",
        )
        .await;
        client
            .find(Locator::Css(&format!("tr[data-lsn=\"{lsn}\"] a")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until_text(&client, "main pre", |t| t == "from a lone node").await;
        assert!(console_errors(&driver, &client).await.is_empty());
        client.close().await.unwrap();
    });
}
