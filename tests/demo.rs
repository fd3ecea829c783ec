//! `latchkey demo`, run as a user runs it: start the binary, read the URL it
//! prints, sign in as alice through it, see the sample app's page.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

use common::browser::{browser, sign_in_at_idp};
use common::process::KillOnDrop;
use reqwest::header::{ACCEPT, LOCATION};
use url::Url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_and_alice_signs_in() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args([
            "demo",
            "--port",
            "0",
            "--idp-port",
            "0",
            "--upstream-port",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut running = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let open = loop {
        let line = lines.next().expect("the demo printed its URL").unwrap();
        if let Some(rest) = line.trim().strip_prefix("open ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert!(open.starts_with("http://127.0.0.1:"), "{open}");
    let (log_tx, log_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });

    let browser = browser();
    let mut next = Url::parse(&open).unwrap();
    let mut page = String::new();
    for _ in 0..10 {
        let response = browser
            .get(next.clone())
            .header(ACCEPT, "text/html")
            .send()
            .await
            .unwrap();
        if response.status().is_redirection() {
            next = next
                .join(response.headers()[LOCATION].to_str().unwrap())
                .unwrap();
            continue;
        }
        assert_eq!(response.status(), 200);
        if next.path() == "/authorize" {
            next = sign_in_at_idp(&browser, &next, "alice").await;
            continue;
        }
        page = response.text().await.unwrap();
        break;
    }
    assert!(
        page.contains("Hello from the app behind latchkey"),
        "{page}"
    );
    assert!(page.contains("alice@example.com"), "{page}");

    // SIGTERM: it stops serving and exits cleanly.
    let pid = running.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo ignored SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        reqwest::get(&open).await.is_err(),
        "still serving after SIGTERM"
    );

    // One log line per request, under its own target, without secrets (and,
    // written to a pipe, without terminal colour codes).
    let logs: Vec<String> = log_rx.iter().collect();
    let app_page = logs.iter().find(|l| {
        l.contains("latchkey::request")
            && l.contains("route=upstream")
            && l.contains("status=200")
            && l.contains("user=\"alice\"")
    });
    assert!(
        app_page.is_some(),
        "no request line for the app page in {logs:#?}"
    );
    for line in &logs {
        assert!(
            !line.contains("_latchkey=") && !line.contains("code=") && !line.contains("state="),
            "a log line carries a secret: {line}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "a log line written to a pipe carries colour codes: {line:?}"
        );
    }
}
