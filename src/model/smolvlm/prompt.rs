//! SmolVLM's video prompt, as `SmolVLMProcessor` writes it, and the streaming layout
//! vstreamd derives from it.
//!
//! With a video the processor ignores the checkpoint's chat template and uses its
//! built-in one: `<|im_start|>User: <video>{text}<end_of_utterance>\nAssistant:`, the
//! `<video>` placeholder expanded to a preamble that names the frame count in words
//! and the duration (`You are provided the following series of four frames from a
//! 0:00:04 [H:MM:SS] video.\n`), then per frame `\nFrame from MM:SS:` and the image
//! wrapper `<fake_token_around_image><global-img>` + `<image>`×L +
//! `<fake_token_around_image>`, then `\n\n`.
//!
//! A live stream knows neither its frame count nor its duration, so the streaming
//! layout keeps everything but those two words: the sinks are
//! `<|im_start|>User: You are provided the following series of frames from a live
//! video.\n`; a frame's chunk is its timestamp line (its stream time, minutes
//! unbounded as the processor writes them) and its wrapped embeddings; a question's
//! chunk is `\n\n{question}<end_of_utterance>\nAssistant:`. Each piece is tokenised on
//! its own; with every frame in the context the streaming context is exactly the
//! one-shot prefill of that token sequence (tested).

use std::time::Duration;

/// The processor's preamble of a video (`DEFAULT_VIDEO_INTRO`).
pub fn video_intro(frames: u64, duration_seconds: u64) -> String {
    format!(
        "You are provided the following series of {} frames from a {} [H:MM:SS] video.\n",
        number_words(frames),
        duration_text(duration_seconds)
    )
}

/// The streaming layout's preamble: the processor's, without the count and duration a
/// live stream does not know.
pub const STREAM_INTRO: &str =
    "You are provided the following series of frames from a live video.\n";

/// What opens the user turn (the built-in video template's start).
pub const TURN_OPEN: &str = "<|im_start|>User: ";

/// After the video (`DEFAULT_MEDIA_OUTTRO`).
pub const MEDIA_OUTTRO: &str = "\n\n";

/// What follows the question text (the turn end and the generation prompt).
pub fn turn_close(end_of_utterance: &str) -> String {
    format!("{end_of_utterance}\nAssistant:")
}

/// A frame's timestamp line (`FRAME_TIMESTAMP_MESSAGE`) for a frame `seconds` into the
/// video: whole minutes (unbounded) and seconds, two digits each at least.
pub fn timestamp_line(seconds: f64) -> String {
    let minutes = (seconds / 60.0).floor() as u64;
    let secs = (seconds % 60.0).floor() as u64;
    format!("\nFrame from {minutes:02}:{secs:02}:")
}

/// [`timestamp_line`] of a stream time.
pub fn stream_timestamp_line(time: Duration) -> String {
    let total = time.as_secs();
    format!("\nFrame from {:02}:{:02}:", total / 60, total % 60)
}

/// `str(timedelta(seconds=s))`: `H:MM:SS`, with `N day(s), ` before past a day.
pub fn duration_text(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let hms = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        d => format!("{d} days, {hms}"),
    }
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];
const SCALES: [&str; 5] = ["", "thousand", "million", "billion", "trillion"];

/// 0..1000 in words: `one hundred and twenty-three`.
fn below_thousand(n: u64) -> String {
    let (hundreds, rest) = (n / 100, n % 100);
    let rest_words = match rest {
        0 => String::new(),
        r if r < 20 => ONES[r as usize].to_owned(),
        r if r % 10 == 0 => TENS[(r / 10) as usize].to_owned(),
        r => format!("{}-{}", TENS[(r / 10) as usize], ONES[(r % 10) as usize]),
    };
    match (hundreds, rest) {
        (0, _) => rest_words,
        (h, 0) => format!("{} hundred", ONES[h as usize]),
        (h, _) => format!("{} hundred and {rest_words}", ONES[h as usize]),
    }
}

/// A count in English words as `num2words` (0.5, `lang="en"`) writes it: groups of
/// thousands joined by `, `, except a last group below a hundred, joined by ` and `
/// (`one thousand, two hundred and thirty-four`; `one thousand and one`).
pub fn number_words(n: u64) -> String {
    if n == 0 {
        return ONES[0].to_owned();
    }
    if n < 1000 {
        return below_thousand(n);
    }
    let mut groups = Vec::new();
    let mut rest = n;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let mut out = String::new();
    for (i, &g) in groups.iter().enumerate().rev() {
        if g == 0 {
            continue;
        }
        let words = match SCALES.get(i) {
            Some(&"") => below_thousand(g),
            Some(scale) => format!("{} {scale}", below_thousand(g)),
            None => return n.to_string(),
        };
        if out.is_empty() {
            out = words;
        } else if i == 0 && g < 100 {
            out = format!("{out} and {words}");
        } else {
            out = format!("{out}, {words}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values `num2words` 0.5.14 gives (checked against it).
    #[test]
    fn numbers_read_as_num2words_writes_them() {
        for (n, words) in [
            (0, "zero"),
            (4, "four"),
            (21, "twenty-one"),
            (100, "one hundred"),
            (101, "one hundred and one"),
            (120, "one hundred and twenty"),
            (1000, "one thousand"),
            (1001, "one thousand and one"),
            (1100, "one thousand, one hundred"),
            (1234, "one thousand, two hundred and thirty-four"),
            (100_001, "one hundred thousand and one"),
            (1_050_000, "one million, fifty thousand"),
            (2_000_050, "two million and fifty"),
            (
                123_456,
                "one hundred and twenty-three thousand, four hundred and fifty-six",
            ),
        ] {
            assert_eq!(number_words(n), words, "{n}");
        }
    }

    #[test]
    fn durations_and_timestamps_read_as_python_writes_them() {
        assert_eq!(duration_text(4), "0:00:04");
        assert_eq!(duration_text(3600), "1:00:00");
        assert_eq!(duration_text(90_061), "1 day, 1:01:01");
        assert_eq!(duration_text(200_000), "2 days, 7:33:20");
        assert_eq!(timestamp_line(0.0), "\nFrame from 00:00:");
        assert_eq!(timestamp_line(61.9), "\nFrame from 01:01:");
        assert_eq!(timestamp_line(6000.0), "\nFrame from 100:00:");
        assert_eq!(
            stream_timestamp_line(Duration::from_millis(125_500)),
            "\nFrame from 02:05:"
        );
    }
}
