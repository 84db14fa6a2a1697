//! The daemon's life: SIGTERM while answers stream (each client gets a final event or
//! CANCELLED, exit code 0, the disk tier reopens clean with every block), SIGHUP applying
//! an edited stream list, API-created streams returning after a restart.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Code;
use vstreamd::serve::proto as pb;

const START: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(60);

fn stream_toml(id: &str, pattern: &str) -> String {
    format!("[[streams]]\nid = \"{id}\"\nuri = \"test://{pattern}\"\nsample_fps = 8.0\n\n")
}

#[test]
fn sigterm_ends_open_asks_cleanly_and_the_store_reopens_whole() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = daemon::config_text(
        &state,
        "shutdown_grace_seconds = 0.3\nmax_request_seconds = 30.0",
        &format!(
            "[engine]\nmax_new_tokens_limit = 100000\n\n{}",
            stream_toml("cam", "ball")
        ),
    );
    let d = daemon::Daemon::start_with(dir.path(), &config, START);
    let blocks_before = client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        client::wait_stream(&mut c, "cam", START, |s| s.frames_encoded >= 8).await;
        // (Stream figures are read between questions: before the endless one.)
        let blocks = c
            .get_stream(pb::GetStreamRequest { id: "cam".into() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .blocks;

        // One answer generating, one queued behind it, one standing watch.
        let mut running = c
            .ask(client::ask("cam", "hi", 100_000))
            .await
            .unwrap()
            .into_inner();
        running.message().await.unwrap().expect("first token");
        // Clients read what they are sent (h2 closes a connection that buffers too
        // many small frames unread).
        let running = tokio::spawn(client::collect(running));
        let queued = c
            .ask(client::ask("cam", "hi", 100_000))
            .await
            .unwrap()
            .into_inner();
        let queued = tokio::spawn(client::collect(queued));
        let watch = c
            .watch(pb::WatchRequest {
                stream: "cam".into(),
                question: "is it moving ?".into(),
                interval_seconds: 0.2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        d.sigterm();
        let running = running.await.unwrap();
        let queued = queued.await.unwrap();
        for (name, got) in [("running", &running), ("queued", &queued)] {
            let final_cancelled = got.code == Some(Code::Ok)
                && got
                    .answer
                    .as_ref()
                    .is_some_and(|a| a.finish == pb::FinishReason::Cancelled as i32);
            let status_cancelled = got.code == Some(Code::Cancelled);
            assert!(
                final_cancelled || status_cancelled,
                "{name}: {:?} {} answer {:?}\n{}",
                got.code,
                got.message,
                got.answer.as_ref().map(|a| a.finish),
                d.log()
            );
        }
        // The running answer ends with its final event, the text so far.
        assert!(running.answer.is_some(), "{running:?}");
        let mut watch = watch;
        let end = loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break Code::Ok,
                Err(s) => break s.code(),
            }
        };
        assert_eq!(end, Code::Cancelled);
        blocks
    });
    let mut d = d;
    let status = d.wait(STOP);
    assert!(status.success(), "exit {status}:\n{}", d.log());
    assert!(d.log().contains("engine stopped, blocks durable"));
    drop(d);

    // Restart: every block is back, nothing torn or corrupt.
    let d = daemon::Daemon::start_with(dir.path(), &config, START);
    let log = d.log();
    assert!(
        log.contains("torn_bytes=0") && log.contains("corrupt=0"),
        "{log}"
    );
    let text = d.scrape();
    for metric in [
        "vstreamd_kv_corrupt_records_total",
        "vstreamd_kv_torn_tails_total",
    ] {
        assert_eq!(
            daemon::metric_value(&text, metric, &[]).unwrap_or(0.0),
            0.0,
            "{metric}"
        );
    }
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        let s = c
            .get_stream(pb::GetStreamRequest { id: "cam".into() })
            .await
            .unwrap()
            .into_inner();
        let blocks = s.status.unwrap().blocks;
        assert!(blocks >= blocks_before, "{blocks} < {blocks_before}");
        let answer = client::collect(
            c.ask(client::ask("cam", "hi", 2))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(answer.code, Some(Code::Ok));
    });
    assert!(d.stop(STOP).success());
}

async fn streams_by_origin(c: &mut client::Client) -> BTreeMap<String, i32> {
    c.list_streams(pb::ListStreamsRequest {})
        .await
        .unwrap()
        .into_inner()
        .streams
        .into_iter()
        .map(|s| (s.spec.unwrap().id, s.origin))
        .collect()
}

#[test]
fn sighup_applies_the_edited_stream_list_and_api_streams_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let with = |streams: &str| daemon::config_text(&state, "", streams);
    let d = daemon::Daemon::start_with(dir.path(), &with(&stream_toml("a", "ball")), START);
    let config = pb::StreamOrigin::Config as i32;
    let api = pb::StreamOrigin::Api as i32;
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        c.create_stream(pb::CreateStreamRequest {
            stream: Some(pb::StreamSpec {
                id: "mine".into(),
                uri: "test://snow".into(),
                sample_fps: 2.0,
                ..Default::default()
            }),
        })
        .await
        .expect("CreateStream");
        assert_eq!(
            streams_by_origin(&mut c).await,
            BTreeMap::from([("a".into(), config), ("mine".into(), api)])
        );

        // Edit: `a` goes, `b` comes; an invalid edit first is refused and changes nothing.
        std::fs::write(
            &d.config_path,
            with("[[streams]]\nid = \"b\"\nuri = \"gopher://x\"\n"),
        )
        .unwrap();
        d.sighup();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(streams_by_origin(&mut c).await.len(), 2);
        std::fs::write(&d.config_path, with(&stream_toml("b", "smpte"))).unwrap();
        d.sighup();
        let wanted = BTreeMap::from([("b".into(), config), ("mine".into(), api)]);
        let start = std::time::Instant::now();
        while streams_by_origin(&mut c).await != wanted {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "reload not applied:\n{}",
                d.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client::wait_stream(&mut c, "b", START, |s| s.frames_encoded >= 1).await;
    });
    assert!(d.log().contains("the config is invalid"), "{}", d.log());
    let config_text = std::fs::read_to_string(&d.config_path).unwrap();
    assert!(d.stop(STOP).success());

    // After a restart the API stream is back, with the blocks it had.
    let d = daemon::Daemon::start_with(dir.path(), &config_text, START);
    client::runtime().block_on(async {
        let mut c = client::connect(&d.grpc_url, None).await;
        assert_eq!(
            streams_by_origin(&mut c).await,
            BTreeMap::from([("b".into(), config), ("mine".into(), api)])
        );
        let mine = c
            .get_stream(pb::GetStreamRequest { id: "mine".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.spec.unwrap().sample_fps, 2.0);
    });
    assert!(d.stop(STOP).success());
}
