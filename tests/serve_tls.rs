//! TLS: the daemon serves over rustls with the configured certificate and key; a client
//! trusting that certificate asks and gets an answer, a plaintext client gets nothing.

#[path = "common/client.rs"]
mod client;
#[path = "common/daemon.rs"]
mod daemon;

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;
use vstreamd::serve::proto as pb;

#[test]
fn answers_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("server.crt"), &cert_pem).unwrap();
    std::fs::write(
        dir.path().join("server.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let tls = format!(
        "[server.tls]\ncert = \"{0}/server.crt\"\nkey = \"{0}/server.key\"\n",
        dir.path().display()
    );
    // `[server.tls]` must follow the [server] keys: it goes in through `server`.
    let d = daemon::Daemon::start_with(
        dir.path(),
        &daemon::config_text(
            &dir.path().join("state"),
            &tls,
            "[[streams]]\nid = \"cam\"\nuri = \"test://ball\"\nsample_fps = 8.0\n",
        ),
        Duration::from_secs(120),
    );
    let port = d.grpc_addr.rsplit(':').next().unwrap().to_owned();
    client::runtime().block_on(async {
        let channel = Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&cert_pem))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .expect("TLS connection");
        let mut c = pb::video_streams_client::VideoStreamsClient::new(channel);
        let start = std::time::Instant::now();
        loop {
            let s = c
                .get_stream(pb::GetStreamRequest { id: "cam".into() })
                .await
                .unwrap()
                .into_inner();
            if s.status.unwrap().frames_encoded >= 2 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = client::collect(
            c.ask(client::ask("cam", "what colour is the circle ?", 3))
                .await
                .unwrap()
                .into_inner(),
        )
        .await;
        assert_eq!(answer.code, Some(Code::Ok), "{}", answer.message);
        assert!(answer.answer.is_some());

        // Plaintext HTTP/2 to the TLS port fails.
        let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await;
        if let Ok(channel) = plain {
            let mut c = pb::video_streams_client::VideoStreamsClient::new(channel);
            let e = c.list_streams(pb::ListStreamsRequest {}).await.unwrap_err();
            assert_ne!(e.code(), Code::Ok);
        }
    });
    assert!(d.stop(Duration::from_secs(60)).success());
}
