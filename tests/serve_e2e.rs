//! The daemon end to end: the real binary on 127.0.0.1 port 0 with the tiny model;
//! health and reflection through their standard clients; a stream created over the API
//! from a live source; ask (tokens streamed, then citations), summarize, watch (alerts
//! with cooldown); delete with purge.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::Duration;

use tonic::Code;
use vstreamd::serve::proto as pb;

const QUESTION: &str = "what colour is the circle ?";

#[test]
fn create_ask_summarize_watch_through_the_rust_client() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(&state, "", "[engine]\nwindow_frames = 4\ntop_k = 4\n"),
        Duration::from_secs(120),
    );
    client::runtime().block_on(async {
        // Health: SERVING overall and for the API; reflection lists the service.
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(client::channel(&d.grpc_url).await);
        for service in ["", "vstream.v1.VideoStreams"] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(
                r.status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
        let services = reflection_services(&d.grpc_url).await;
        assert!(
            services.iter().any(|s| s == "vstream.v1.VideoStreams"),
            "{services:?}"
        );
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{services:?}"
        );

        let mut c = client::connect(&d.grpc_url, None).await;
        let created = c
            .create_stream(pb::CreateStreamRequest {
                stream: Some(pb::StreamSpec {
                    id: "cam".into(),
                    uri: "test://ball".into(),
                    sample_fps: 8.0,
                    ..Default::default()
                }),
            })
            .await
            .expect("CreateStream")
            .into_inner();
        assert_eq!(created.origin, pb::StreamOrigin::Api as i32);
        let listed = c
            .list_streams(pb::ListStreamsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.streams.len(), 1);
        let s = client::wait_stream(&mut c, "cam", Duration::from_secs(120), |s| {
            s.frames_encoded >= 12
        })
        .await;
        let st = s.status.unwrap();
        assert!(
            st.blocks >= 8 && st.first.is_some() && st.last.is_some(),
            "{st:?}"
        );

        // Ask: tokens as they come, then the answer whose text they make up.
        let asked = client::collect(
            c.ask(client::ask("cam", QUESTION, 6))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(asked.code, Some(Code::Ok), "{}", asked.message);
        let answer = asked.answer.expect("answer event");
        assert!(!asked.tokens.is_empty());
        let streamed: String = asked.tokens.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(streamed, answer.text);
        let retrieved = answer
            .citations
            .iter()
            .filter(|c| c.score.is_some())
            .count();
        let window = answer
            .citations
            .iter()
            .filter(|c| c.source == pb::BlockSource::Window as i32)
            .count();
        assert_eq!(window, 4, "{:?}", answer.citations);
        assert!(retrieved >= 4, "{:?}", answer.citations);
        let figures = answer.figures.expect("figures");
        assert!(figures.blocks_scanned >= 4 && figures.context_tokens > 0);
        assert!(answer.citations.windows(2).all(|w| w[0].seq < w[1].seq));

        // Summarize: frames spread over the range, no window.
        let summary = client::collect(
            c.summarize(pb::SummarizeRequest {
                stream: "cam".into(),
                frames: 5,
                max_new_tokens: 4,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        )
        .await;
        assert_eq!(summary.code, Some(Code::Ok), "{}", summary.message);
        let summary = summary.answer.expect("summary answer");
        assert_eq!(summary.citations.len(), 5, "{:?}", summary.citations);
        assert!(summary
            .citations
            .iter()
            .all(|c| c.source != pb::BlockSource::Window as i32));

        // Watch: the positive word is what this model answers over its window, so
        // alerts must come, at most one per cooldown.
        let mut recent = client::ask("cam", "is the circle moving ?", 4);
        recent.options.as_mut().unwrap().mode = pb::AskMode::Recent as i32;
        let recent = client::collect(c.ask(recent).await.unwrap().into_inner()).await;
        let word: String = recent
            .answer
            .expect("recent answer")
            .text
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        assert!(!word.is_empty());
        let mut watch = c
            .watch(pb::WatchRequest {
                stream: "cam".into(),
                question: "is the circle moving ?".into(),
                interval_seconds: 0.2,
                cooldown_seconds: 1.0,
                positive: word.clone(),
                report_all: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut evaluations = Vec::new();
        let mut alerts = Vec::new();
        while evaluations.len() < 12 {
            let event = tokio::time::timeout(Duration::from_secs(60), watch.message())
                .await
                .expect("a watch event within a minute")
                .expect("watch stream")
                .expect("watch open");
            match event.event {
                Some(pb::watch_event::Event::Alert(a)) => alerts.push(a),
                Some(pb::watch_event::Event::Evaluation(e)) => evaluations.push(e),
                None => {}
            }
        }
        drop(watch);
        assert!(!alerts.is_empty(), "no alert for `{word}`: {evaluations:?}");
        assert_eq!(
            alerts.len(),
            evaluations.iter().filter(|e| e.alerted).count()
        );
        for a in &alerts {
            assert!(!a.evidence.is_empty());
            let (since, until) = (a.since.unwrap(), a.until.unwrap());
            assert!(since.stream_seconds <= until.stream_seconds);
        }
        for pair in alerts.windows(2) {
            let gap = pair[1].evaluated_unix_ms - pair[0].evaluated_unix_ms;
            assert!(gap >= 950, "alerts {gap} ms apart, cooldown 1 s");
        }
        for e in &evaluations {
            assert!(!e.alerted || e.positive);
        }

        // Delete with purge: gone from the list and from disk.
        c.delete_stream(pb::DeleteStreamRequest {
            id: "cam".into(),
            purge: true,
        })
        .await
        .expect("DeleteStream");
        let listed = c
            .list_streams(pb::ListStreamsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(listed.streams.is_empty());
        assert!(!state.join("kv/cam").exists());
        let gone = c
            .get_stream(pb::GetStreamRequest { id: "cam".into() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    });
    let status = d.stop(Duration::from_secs(60));
    assert!(status.success(), "{status}");
}

/// Service names through the standard reflection API (what grpcurl uses).
async fn reflection_services(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut r = ServerReflectionClient::new(client::channel(url).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = r
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}
