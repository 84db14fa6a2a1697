//! Ingest from a real RTSP server on 127.0.0.1 (gst-rtsp-server in a child process of
//! this test binary): frames arrive over TCP and UDP; the server is killed with SIGKILL
//! mid-stream and restarted, and ingest resumes by itself; credentials are enforced;
//! a port with nothing listening gives a typed error and reconnection attempts.

#[path = "support/media.rs"]
mod media;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gstreamer as gst;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use media::GENEROUS;
use vstreamd::error::IngestError;
use vstreamd::ingest::{
    self, Backoff, Credentials, RtspTransport, Source, StreamConfig, StreamState,
};

const PORT_ENV: &str = "VSTREAMD_TEST_RTSP_PORT";
const AUTH_ENV: &str = "VSTREAMD_TEST_RTSP_AUTH";

/// The server itself: runs only when re-executed by `RtspServer::start`.
#[test]
#[ignore = "helper process for the RTSP tests, started by them"]
fn rtsp_server_child() {
    let Ok(port) = std::env::var(PORT_ENV) else {
        return;
    };
    gst::init().unwrap();
    let server = rtsp::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port);
    let factory = rtsp::RTSPMediaFactory::new();
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=10/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )",
    );
    factory.set_shared(true);
    if let Ok(auth) = std::env::var(AUTH_ENV) {
        let (user, pass) = auth.split_once(':').unwrap();
        let rtsp_auth = rtsp::RTSPAuth::new();
        let token = rtsp::RTSPToken::builder()
            .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
            .build();
        rtsp_auth.add_basic(&rtsp::RTSPAuth::make_basic(user, pass), &token);
        server.set_auth(Some(&rtsp_auth));
        factory.add_role_from_structure(
            &gst::Structure::builder("viewer")
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS, true)
                .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, true)
                .build(),
        );
    }
    server.mount_points().unwrap().add_factory("/cam", factory);
    let main_loop = gst::glib::MainLoop::new(None, false);
    let _source = server.attach(None).unwrap();
    println!("\nready {}", server.bound_port());
    main_loop.run();
}

/// A server child process; killed with SIGKILL on drop.
struct RtspServer {
    child: Child,
}

impl RtspServer {
    fn start(port: u16, auth: Option<&str>) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--ignored",
            "--exact",
            "rtsp_server_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PORT_ENV, port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(a) = auth {
            cmd.env(AUTH_ENV, a);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                // libtest prints "test rtsp_server_child ... " on the same line first.
                Some(Ok(line)) if line.contains("ready ") => break,
                Some(Ok(_)) => continue,
                _ => panic!("RTSP server child exited before it was ready"),
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rtsp_config(
    port: u16,
    transport: RtspTransport,
    credentials: Option<Credentials>,
) -> StreamConfig {
    let uri = format!("rtsp://127.0.0.1:{port}/cam");
    let source = Source::parse(&uri, transport, credentials).unwrap();
    let mut c = StreamConfig::new("cam", source);
    c.sample_fps = 5.0;
    c.width = 64;
    c.height = 64;
    c.queue_capacity = 1024;
    c.backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    c.stall_timeout = Duration::from_secs(3);
    c
}

fn survives_a_server_restart(transport: RtspTransport) {
    let port = free_port();
    let mut server = RtspServer::start(port, None);
    let handle = ingest::spawn(rtsp_config(port, transport, None)).unwrap();
    let before = handle
        .wait_for(GENEROUS, |s| s.frames_sampled >= 5)
        .unwrap_or_else(|s| panic!("no frames before the restart: {s:?}"));
    assert_eq!(before.state, StreamState::Live);

    server.kill();
    let down = handle
        .wait_for(GENEROUS, |s| {
            matches!(s.state, StreamState::Reconnecting { .. })
        })
        .unwrap_or_else(|s| panic!("the loss was not noticed: {s:?}"));
    let frames_before = down.frames_sampled;
    assert!(down.last_error.is_some() || down.reconnects >= 1);

    let _server = RtspServer::start(port, None);
    let after = handle
        .wait_for(GENEROUS, |s| {
            s.state == StreamState::Live && s.frames_sampled >= frames_before + 5
        })
        .unwrap_or_else(|s| panic!("ingest did not resume: {s:?}"));
    assert!(after.reconnects >= 1);
    assert!(after.sessions >= 2);
    println!(
        "{transport:?}: {frames_before} frames before the restart, {} after, {} reconnects",
        after.frames_sampled - frames_before,
        after.reconnects
    );

    let frames: Vec<_> = handle.frames.try_iter().collect();
    assert!(frames.len() as u64 >= frames_before + 5);
    assert!(
        frames.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "sequence gaps"
    );
    assert!(
        frames.windows(2).all(|w| w[0].pts < w[1].pts),
        "timestamps not monotonic across the restart"
    );
    assert!(frames.iter().all(|f| f.rgb().len() == 64 * 64 * 3));
    handle.stop();
}

#[test]
fn rtsp_over_tcp_survives_a_server_restart() {
    survives_a_server_restart(RtspTransport::Tcp);
}

#[test]
fn rtsp_over_udp_survives_a_server_restart() {
    survives_a_server_restart(RtspTransport::Udp);
}

#[test]
fn rtsp_credentials_are_enforced() {
    let port = free_port();
    let _server = RtspServer::start(port, Some("viewer:right-pass"));

    let wrong = Some(Credentials {
        user: "viewer".into(),
        password: "wrong-pass".into(),
    });
    let handle = ingest::spawn(rtsp_config(port, RtspTransport::Tcp, wrong)).unwrap();
    let status = handle
        .wait_for(GENEROUS, |s| s.last_error.is_some())
        .unwrap_or_else(|s| panic!("no error with a wrong password: {s:?}"));
    assert!(
        matches!(status.last_error, Some(IngestError::Unauthorized(ref m)) if !m.contains("wrong-pass")),
        "{:?}",
        status.last_error
    );
    assert_eq!(status.frames_sampled, 0);
    handle.stop();

    let right = Source::parse(
        &format!("rtsp://viewer:right-pass@127.0.0.1:{port}/cam"),
        RtspTransport::Tcp,
        None,
    )
    .unwrap();
    let mut config = rtsp_config(port, RtspTransport::Tcp, None);
    config.source = right;
    let handle = ingest::spawn(config).unwrap();
    handle
        .wait_for(GENEROUS, |s| s.frames_sampled >= 3)
        .unwrap_or_else(|s| panic!("no frames with the right password: {s:?}"));
    handle.stop();
}

#[test]
fn unreachable_rtsp_host_is_a_typed_error_and_retried() {
    let port = free_port();
    let handle = ingest::spawn(rtsp_config(port, RtspTransport::Tcp, None)).unwrap();
    let status = handle
        .wait_for(GENEROUS, |s| s.reconnects >= 2)
        .unwrap_or_else(|s| panic!("no reconnection attempts: {s:?}"));
    assert!(
        matches!(status.last_error, Some(IngestError::Unreachable(_))),
        "{:?}",
        status.last_error
    );
    assert_eq!(status.frames_sampled, 0);
    handle.stop();
}
