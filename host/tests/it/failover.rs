//! A client of several servers (issue 16, the client's part): a request that gets no
//! answer from one goes to the next, and a submission whose answer was lost after the
//! server took it is not doubled on the retry (its `Idempotency-Key` replays it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use serde_json::json;
use wasmesh_host::client::Client;

use crate::Server;
use crate::server::{WAIT, action, upload_test_guest};

/// A loopback address where nothing listens.
fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// A proxy that passes one request on to `server`, waits for the server's answer, and
/// hangs up on the client without giving it: an answer lost on the way back.
fn answer_losing_proxy(server: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let upstream = server.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let request = read_message(&mut client);
        let mut server = TcpStream::connect(upstream).unwrap();
        server.write_all(&request).unwrap();
        // The server has taken the request once its answer starts to come.
        let mut answer = [0u8; 1];
        server.read_exact(&mut answer).unwrap();
        drop(client);
    });
    format!("http://{address}")
}

/// One HTTP/1.1 request: its head and a `Content-Length` body.
fn read_message(stream: &mut TcpStream) -> Vec<u8> {
    let mut message = Vec::new();
    let mut byte = [0u8; 1];
    while !message.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        message.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&message).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    message.extend(body);
    message
}

#[test]
fn a_client_of_several_servers_fails_over_without_doubling_a_submission() {
    let server = Server::start(&[]);
    let direct = server.client();
    let worker = upload_test_guest(&direct);

    // The first server never answers: the second one does, and is used from then on.
    let client = Client::new(format!("{},{}", dead_address(), server.url), None);
    let lsn = client
        .submit(
            &action(&client, worker, &["echo"], Some(b"once")),
            None,
            None,
        )
        .unwrap();
    assert_eq!(client.base(), server.url);
    assert_eq!(client.wait(lsn, WAIT).unwrap().state, "succeeded");

    // The answer to a submission is lost after the server took it: the retry on the
    // next server (the same one, directly) gets the same job back, not a second one.
    let before = direct
        .call(reqwest::Method::GET, "/compute/jobs", None)
        .unwrap()["jobs"]
        .as_array()
        .unwrap()
        .len();
    let lossy = Client::new(
        format!("{},{}", answer_losing_proxy(&server.url), server.url),
        None,
    );
    let job = json!({"worker": worker, "args": ["args", "exactly", "once"]});
    let retried = lossy.submit(&job, None, None).unwrap();
    let jobs = direct
        .call(reqwest::Method::GET, "/compute/jobs", None)
        .unwrap()["jobs"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(jobs.len(), before + 1, "one submission, one job: {jobs:?}");
    assert_eq!(jobs[0]["lsn"], json!(retried));
    assert_eq!(lossy.wait(retried, WAIT).unwrap().state, "succeeded");

    // The command line takes the same list.
    let out = crate::wasmesh(
        &[
            "result",
            &lsn.to_string(),
            "--server",
            &format!("{},{}", dead_address(), server.url),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", crate::err(&out));
    assert!(
        crate::out(&out).contains("succeeded"),
        "{}",
        crate::out(&out)
    );
}

/// A node given two coordinators stays with the first and moves to the second when
/// the first stops answering; the second then runs its jobs on it.
#[test]
fn a_node_moves_to_the_next_coordinator_when_its_own_stops_answering() {
    let fast = ["--heartbeat-interval", "100ms", "--lease", "2s"];
    let first = Server::coordinator(&fast);
    let second = Server::coordinator(&fast);
    let node = Server::start(&[
        "--coordinator",
        &format!("{},{}", first.url, second.url),
        "--node-id",
        "mover",
    ]);
    let listed = |coordinator: &Server| {
        coordinator
            .client()
            .call(reqwest::Method::GET, "/api/v1/cluster/nodes", None)
            .unwrap()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "mover" && n["state"] == "ready")
    };
    crate::server::eventually(WAIT, || listed(&first).then_some(()));
    assert!(!listed(&second), "it stays with the first while it answers");
    first.kill();
    crate::server::eventually(WAIT, || listed(&second).then_some(()));
    let client = second.client();
    let worker = upload_test_guest(&client);
    let lsn = client
        .submit(
            &action(&client, worker, &["echo"], Some(b"moved")),
            None,
            None,
        )
        .unwrap();
    let result = client.wait(lsn, WAIT).unwrap();
    assert_eq!(
        (result.state.as_str(), result.node.as_str()),
        ("succeeded", "mover")
    );
    drop(node);
}
