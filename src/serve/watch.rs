//! Standing questions (Watch): a yes/no question evaluated every interval over the
//! recent window ([`AskMode::Recent`], a few greedy tokens), an alert each time the
//! answer is positive — at most one per cooldown — with the span and the frames it was
//! given over as evidence.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::Status;

use super::bounds::MAX_POSITIVE_BYTES;
use super::convert;
use super::forward::{forward, Forwarded};
use super::proto as pb;
use crate::engine::{AskMode, AskRequest, Engine};
use crate::metrics as names;

/// Shortest interval between evaluations.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Interval when the request sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Tokens generated per evaluation: enough for "yes"/"no" and a word or two.
const ANSWER_TOKENS: usize = 8;

/// A validated WatchRequest.
#[derive(Debug, Clone)]
pub struct WatchParams {
    pub stream: String,
    pub question: String,
    pub interval: Duration,
    pub cooldown: Duration,
    pub recent_frames: Option<usize>,
    /// Lower-case; an answer whose first word is this is positive.
    pub positive: String,
    pub report_all: bool,
}

impl WatchParams {
    pub fn from_request(r: &pb::WatchRequest, max_question_bytes: usize) -> Result<Self, Status> {
        super::bounds::stream_id(&r.stream, "stream")?;
        let question = convert::question(&r.question, max_question_bytes)?;
        let interval = if r.interval_seconds == 0.0 {
            DEFAULT_INTERVAL
        } else if r.interval_seconds.is_finite()
            && r.interval_seconds >= MIN_INTERVAL.as_secs_f64()
            && r.interval_seconds <= 86_400.0
        {
            Duration::from_secs_f64(r.interval_seconds)
        } else {
            return Err(super::bounds::invalid(
                "interval_seconds must be in [0.1, 86400] (0: 5)",
            ));
        };
        if !(r.cooldown_seconds.is_finite() && (0.0..=86_400.0).contains(&r.cooldown_seconds)) {
            return Err(super::bounds::invalid(
                "cooldown_seconds must be in [0, 86400]",
            ));
        }
        let positive = if r.positive.trim().is_empty() {
            "yes".to_owned()
        } else {
            r.positive.trim().to_lowercase()
        };
        if positive.len() > MAX_POSITIVE_BYTES || positive.split_whitespace().count() != 1 {
            return Err(super::bounds::invalid(format!(
                "positive must be one word of at most {MAX_POSITIVE_BYTES} bytes"
            )));
        }
        Ok(Self {
            stream: r.stream.clone(),
            question,
            interval,
            cooldown: Duration::from_secs_f64(r.cooldown_seconds),
            recent_frames: (r.recent_frames > 0).then_some(r.recent_frames as usize),
            positive,
            report_all: r.report_all,
        })
    }

    /// Whether `answer`'s first word (letters and digits, case folded) is the positive one.
    pub fn is_positive(&self, answer: &str) -> bool {
        let first: String = answer
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect::<String>()
            .to_lowercase();
        !first.is_empty() && first == self.positive
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a watch until the deadline, the client leaving or the daemon stopping; the
/// returned status ends the client's stream.
pub async fn run(
    engine: Arc<Engine>,
    params: WatchParams,
    tx: &mpsc::Sender<Result<pb::WatchEvent, Status>>,
    deadline: Instant,
    mut cancel_all: watch::Receiver<bool>,
) -> Status {
    let mut tick = tokio::time::interval(params.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_alert: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline) => return Status::deadline_exceeded("the watch's deadline passed"),
            _ = tx.closed() => return Status::cancelled("the client went away"),
            _ = cancel_all.changed() => return Status::cancelled("the daemon is stopping"),
        }
        if *cancel_all.borrow() {
            return Status::cancelled("the daemon is stopping");
        }
        let request = AskRequest {
            stream: params.stream.clone(),
            question: params.question.clone(),
            mode: AskMode::Recent,
            recent_frames: params.recent_frames,
            max_new_tokens: Some(ANSWER_TOKENS),
            ..Default::default()
        };
        let handle = match engine.ask(request) {
            Ok(h) => h,
            Err(e) => return convert::status(&e),
        };
        let answer = match forward(handle, tx, None, deadline, cancel_all.clone()).await {
            Forwarded::Answer(a) => a,
            // Nothing encoded yet: try again next interval.
            Forwarded::Status(s) if s.code() == tonic::Code::FailedPrecondition => continue,
            Forwarded::Status(s) => return s,
        };
        let evaluated_unix_ms = unix_ms();
        let positive = params.is_positive(&answer.text);
        let alerted = positive && last_alert.is_none_or(|t| t.elapsed() >= params.cooldown);
        if alerted {
            last_alert = Some(Instant::now());
            metrics::counter!(names::WATCH_ALERTS, "stream" => params.stream.clone()).increment(1);
            let since = answer.citations.iter().min_by_key(|c| c.pts);
            let until = answer.citations.iter().max_by_key(|c| c.pts);
            let alert = pb::WatchEvent {
                event: Some(pb::watch_event::Event::Alert(pb::Alert {
                    since: since.map(|c| convert::moment(c.pts, c.wall)),
                    until: until.map(|c| convert::moment(c.pts, c.wall)),
                    answer: answer.text.clone(),
                    evidence: answer.citations.iter().map(convert::citation).collect(),
                    evaluated_unix_ms,
                })),
            };
            if tx.send(Ok(alert)).await.is_err() {
                return Status::cancelled("the client went away");
            }
        }
        if params.report_all {
            let evaluation = pb::WatchEvent {
                event: Some(pb::watch_event::Event::Evaluation(pb::Evaluation {
                    answer: answer.text,
                    positive,
                    alerted,
                    evaluated_unix_ms,
                })),
            };
            if tx.send(Ok(evaluation)).await.is_err() {
                return Status::cancelled("the client went away");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(positive: &str) -> WatchParams {
        WatchParams::from_request(
            &pb::WatchRequest {
                stream: "cam".into(),
                question: "is anyone there?".into(),
                positive: positive.into(),
                ..Default::default()
            },
            4096,
        )
        .unwrap()
    }

    #[test]
    fn positive_is_the_first_word() {
        let p = params("");
        assert!(p.is_positive("Yes, a person."));
        assert!(p.is_positive("  yes"));
        assert!(!p.is_positive("yesterday"));
        assert!(!p.is_positive("No."));
        assert!(!p.is_positive(""));
        assert!(params("Alarm").is_positive("alarm!"));
    }

    #[test]
    fn bad_watches_are_refused() {
        let base = pb::WatchRequest {
            stream: "cam".into(),
            question: "q?".into(),
            ..Default::default()
        };
        for bad in [
            pb::WatchRequest {
                interval_seconds: 0.01,
                ..base.clone()
            },
            pb::WatchRequest {
                interval_seconds: f64::NAN,
                ..base.clone()
            },
            pb::WatchRequest {
                cooldown_seconds: -1.0,
                ..base.clone()
            },
            pb::WatchRequest {
                positive: "two words".into(),
                ..base.clone()
            },
            pb::WatchRequest {
                question: " ".into(),
                ..base.clone()
            },
            pb::WatchRequest {
                stream: "".into(),
                ..base.clone()
            },
        ] {
            let e = WatchParams::from_request(&bad, 4096).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        let p = WatchParams::from_request(&base, 4096).unwrap();
        assert_eq!(p.interval, DEFAULT_INTERVAL);
    }
}
