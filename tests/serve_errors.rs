//! Every error path of the API, against the real daemon with auth on: status codes for
//! bad input, unknown streams, missing or wrong tokens, limits, and deadlines and
//! cancellation that stop generation (the engine is free again at once, and counts the
//! question as cancelled).

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::{Duration, Instant};

use tonic::{Code, Request};
use vstreamd::serve::proto as pb;

const TOKEN: &str = "alice-0123456789abcdef";
const OTHER: &str = "bob-fedcba9876543210";
const THIRD: &str = "carol-0000111122223333";
/// Far more tokens than the deadline allows: generation runs until stopped.
const ENDLESS: u32 = 100_000;

fn start(dir: &std::path::Path) -> daemon::Daemon {
    let tokens = dir.join("tokens");
    std::fs::write(
        &tokens,
        format!("# test tokens\nalice:{TOKEN}\nbob:{OTHER}\ncarol:{THIRD}\n"),
    )
    .unwrap();
    let server = format!(
        "auth_tokens_file = \"{}\"\nmax_question_bytes = 64\nmax_concurrent_asks = 2\nmax_concurrent_asks_per_client = 1\n",
        tokens.display()
    );
    let extra = "[engine]\nmax_new_tokens_limit = 100000\n\n[[streams]]\nid = \"cam\"\nuri = \"test://ball\"\nsample_fps = 8.0\n";
    daemon::Daemon::start_with(
        dir,
        &daemon::config_text(&dir.join("state"), &server, extra),
        Duration::from_secs(120),
    )
}

fn range(since: f64, until: f64) -> pb::TimeRange {
    use pb::time_point::Point;
    pb::TimeRange {
        since: Some(pb::TimePoint {
            point: Some(Point::StreamSeconds(since)),
        }),
        until: Some(pb::TimePoint {
            point: Some(Point::StreamSeconds(until)),
        }),
    }
}

fn cancelled_asks(d: &daemon::Daemon) -> f64 {
    daemon::metric_value(
        &d.scrape(),
        "vstreamd_engine_asks_total",
        &[("outcome", "cancelled")],
    )
    .unwrap_or(0.0)
}

#[test]
fn every_error_path_has_its_status_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, Some(TOKEN)).await;
        client::wait_stream(&mut c, "cam", Duration::from_secs(120), |s| {
            s.frames_encoded >= 4
        })
        .await;

        // UNAUTHENTICATED: no token, a wrong token; health stays open.
        for token in [None, Some("not-a-token-at-all-0000")] {
            let mut anon = client::connect(&d.grpc_url, token).await;
            let e = anon
                .list_streams(pb::ListStreamsRequest {})
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::Unauthenticated, "{token:?}");
            let code = client::ask_code(&mut anon, Request::new(client::ask("cam", "hi", 2))).await;
            assert_eq!(code, Code::Unauthenticated);
        }

        // INVALID_ARGUMENT: empty and oversized questions, an inverted range, bad
        // options, bad stream specs.
        let mut bad = vec![
            client::ask("cam", "", 2),
            client::ask("cam", "   ", 2),
            client::ask("cam", &"why ".repeat(20), 2),
            client::ask("", "hi", 2),
        ];
        let mut inverted = client::ask("cam", "hi", 2);
        inverted.range = Some(range(10.0, 2.0));
        bad.push(inverted);
        let mut negative = client::ask("cam", "hi", 2);
        negative.range = Some(range(-1.0, 2.0));
        bad.push(negative);
        let mut top_p = client::ask("cam", "hi", 2);
        top_p.options.as_mut().unwrap().top_p = 1.5;
        bad.push(top_p);
        let mut too_long = client::ask("cam", "hi", 2);
        too_long.options.as_mut().unwrap().max_new_tokens = 1_000_000;
        bad.push(too_long);
        for req in bad {
            let code = client::ask_code(&mut c, Request::new(req.clone())).await;
            assert_eq!(code, Code::InvalidArgument, "{req:?}");
        }
        for spec in [
            pb::StreamSpec {
                id: "x".into(),
                uri: "gopher://cam/1".into(),
                ..Default::default()
            },
            pb::StreamSpec {
                id: "x".into(),
                uri: "".into(),
                ..Default::default()
            },
            pb::StreamSpec {
                id: "../etc".into(),
                uri: "test://ball".into(),
                ..Default::default()
            },
            pb::StreamSpec {
                id: "x".into(),
                uri: "test://ball".into(),
                sample_fps: 500.0,
                ..Default::default()
            },
        ] {
            let e = c
                .create_stream(pb::CreateStreamRequest {
                    stream: Some(spec.clone()),
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{spec:?}: {}", e.message());
        }
        let e = c
            .create_stream(pb::CreateStreamRequest { stream: None })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);

        // NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION.
        let code = client::ask_code(&mut c, Request::new(client::ask("nope", "hi", 2))).await;
        assert_eq!(code, Code::NotFound);
        let e = c
            .get_stream(pb::GetStreamRequest { id: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = c
            .delete_stream(pb::DeleteStreamRequest {
                id: "nope".into(),
                purge: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = c
            .create_stream(pb::CreateStreamRequest {
                stream: Some(pb::StreamSpec {
                    id: "cam".into(),
                    uri: "test://snow".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists);
        let e = c
            .delete_stream(pb::DeleteStreamRequest {
                id: "cam".into(),
                purge: false,
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::FailedPrecondition,
            "config streams are not deleted over the API"
        );
        let mut future = client::ask("cam", "hi", 2);
        future.range = Some(range(1.0e6, 2.0e6));
        let code = client::ask_code(&mut c, Request::new(future)).await;
        assert_eq!(code, Code::FailedPrecondition);

        // DEADLINE_EXCEEDED stops generation: the engine is free again and counts it.
        let before = cancelled_asks(&d);
        let mut req = Request::new(client::ask("cam", "hi", ENDLESS));
        req.set_timeout(Duration::from_millis(400));
        let start = Instant::now();
        let code = client::ask_code(&mut c, req).await;
        assert_eq!(code, Code::DeadlineExceeded);
        assert!(start.elapsed() < Duration::from_secs(30));
        let ok = client::collect(
            c.ask(client::ask("cam", "hi", 2))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(
            ok.code,
            Some(Code::Ok),
            "the engine is free after a deadline: {}",
            ok.message
        );
        assert!(cancelled_asks(&d) >= before + 1.0);

        // RESOURCE_EXHAUSTED: one ask per client, two in all, while alice's long answer
        // and bob's decode side by side.
        let mut long = c
            .ask(client::ask("cam", "hi", ENDLESS))
            .await
            .unwrap()
            .into_inner();
        let first = long.message().await.unwrap().expect("a first token");
        assert!(matches!(first.event, Some(pb::ask_event::Event::Token(_))));
        // Clients read what they are sent (h2 closes a connection that buffers too many
        // small frames unread); aborting the reader drops the stream.
        let long = tokio::spawn(client::collect(long));
        let code = client::ask_code(&mut c, Request::new(client::ask("cam", "hi", 2))).await;
        assert_eq!(code, Code::ResourceExhausted, "alice's second ask");
        let mut bob = client::connect(&d.grpc_url, Some(OTHER)).await;
        let mut bob_long = bob
            .ask(client::ask("cam", "hi", ENDLESS))
            .await
            .unwrap()
            .into_inner();
        let mut carol = client::connect(&d.grpc_url, Some(THIRD)).await;
        let code = client::ask_code(&mut carol, Request::new(client::ask("cam", "hi", 2))).await;
        assert_eq!(code, Code::ResourceExhausted, "the server's limit of 2");

        // CANCELLED: dropping a stream stops its generation; the next question runs.
        let before = cancelled_asks(&d);
        long.abort();
        let first = tokio::time::timeout(Duration::from_secs(60), bob_long.message())
            .await
            .expect("bob's question starts once alice's is cancelled")
            .unwrap()
            .expect("bob's first token");
        assert!(matches!(first.event, Some(pb::ask_event::Event::Token(_))));
        drop(bob_long);
        let start = Instant::now();
        loop {
            let code = client::ask_code(&mut c, Request::new(client::ask("cam", "hi", 2))).await;
            if code == Code::Ok {
                break;
            }
            assert_eq!(code, Code::ResourceExhausted);
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "places never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            cancelled_asks(&d) >= before + 2.0,
            "both generations counted as cancelled"
        );

        // The refusals are counted by reason and the requests by code.
        let text = d.scrape();
        for (reason, _) in [
            ("unauthenticated", 0),
            ("invalid_argument", 0),
            ("resource_exhausted", 0),
        ] {
            let n =
                daemon::metric_value(&text, "vstreamd_grpc_rejected_total", &[("reason", reason)]);
            assert!(n.unwrap_or(0.0) >= 1.0, "{reason}: {n:?}");
        }
        for (method, code) in [
            ("Ask", "INVALID_ARGUMENT"),
            ("Ask", "NOT_FOUND"),
            ("Ask", "DEADLINE_EXCEEDED"),
            ("Ask", "RESOURCE_EXHAUSTED"),
            ("Ask", "OK"),
        ] {
            let n = daemon::metric_value(
                &text,
                "vstreamd_grpc_requests_total",
                &[("method", method), ("code", code)],
            );
            assert!(n.unwrap_or(0.0) >= 1.0, "{method} {code}: {n:?}");
        }
    });
    let status = d.stop(Duration::from_secs(60));
    assert!(status.success(), "{status}");
}

#[test]
fn refuses_to_listen_beyond_loopback_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let config = daemon::config_text(&dir.path().join("state"), "", "").replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"0.0.0.0:0\"",
        1,
    );
    let path = dir.path().join("open.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(daemon::binary())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.listen") && err.contains("auth_tokens_file"),
        "{err}"
    );
    let out = std::process::Command::new(daemon::binary())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve must refuse too");
}
