//! Progress on stderr: a bar on a terminal, nothing otherwise; notes unless --quiet.
//!
//! A phase that counts bytes shows them with the current rate: the bytes done in the last few
//! seconds, not the average since the start (which a fast start or a stall would falsify for
//! long after), and the time left at that rate. A phase that counts things (packs, snapshots)
//! shows them by name.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blocksnap_store::Progress;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::parse::human;

/// How far back the current rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(3);

/// How often the bar is redrawn without progress, so a stall shows as a falling rate.
const TICK: Duration = Duration::from_millis(250);

/// Draws progress bars with indicatif when stderr is a terminal.
pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    show_bar: bool,
    quiet: bool,
}

impl Bar {
    pub fn new(quiet: bool) -> Self {
        Bar {
            bar: Mutex::new(None),
            show_bar: !quiet && std::io::stderr().is_terminal(),
            quiet,
        }
    }

    fn begin(&self, phase: &str, total: u64, style: ProgressStyle) {
        let bar = ProgressBar::new(total);
        bar.set_style(style.progress_chars("=> "));
        bar.set_message(phase.to_string());
        bar.enable_steady_tick(TICK);
        if let Some(old) = self
            .bar
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(bar)
        {
            old.finish_and_clear();
        }
    }
}

/// The bytes per second over the last [`RATE_WINDOW`], from the positions seen at each draw.
#[derive(Default)]
struct Rate {
    seen: VecDeque<(Instant, u64)>,
}

impl Rate {
    /// Notes position `pos` now; returns the rate, once there is a second of history.
    fn at(&mut self, pos: u64, now: Instant) -> Option<f64> {
        self.seen.push_back((now, pos));
        while self.seen.len() > 2 && now.duration_since(self.seen[1].0) >= RATE_WINDOW {
            self.seen.pop_front();
        }
        let (then, was) = *self.seen.front()?;
        let secs = now.duration_since(then).as_secs_f64();
        (secs >= 1.0).then(|| pos.saturating_sub(was) as f64 / secs)
    }
}

/// The style of a phase counted in bytes: done of total, the current rate, the time left.
fn bytes_style() -> ProgressStyle {
    let rate = std::sync::Arc::new(Mutex::new(Rate::default()));
    ProgressStyle::with_template("{msg} [{bar:24}] {bytes}/{total_bytes} {rate}")
        .expect("a valid template")
        .with_key(
            "rate",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let now = Instant::now();
                let r = rate
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .at(state.pos(), now);
                match r {
                    Some(r) => {
                        let _ = write!(w, "{}/s", human(r as u64));
                        let rest = state.len().unwrap_or(0).saturating_sub(state.pos());
                        if r > 0.0 {
                            let _ = write!(w, ", {} left", duration(rest as f64 / r));
                        }
                    }
                    None => {
                        let _ = write!(w, "…");
                    }
                }
            },
        )
}

/// A count of seconds for people: `45 s`, `3 min 20 s`, `2 h 05 min`.
fn duration(secs: f64) -> String {
    let s = secs.ceil() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        if self.show_bar {
            self.begin(phase, total, bytes_style());
        }
    }

    fn start_count(&self, phase: &str, total: u64, unit: &'static str) {
        if self.show_bar {
            let style = ProgressStyle::with_template(&format!(
                "{{msg}} [{{bar:24}}] {{pos}}/{{len}} {unit}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            self.begin(phase, total, style);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            b.inc(bytes);
            // The total is counted before the work; should the work turn out larger (a file
            // grown meanwhile), the bar says so rather than sitting past its end.
            if b.length().is_some_and(|len| b.position() > len) {
                b.set_length(b.position());
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }

    fn message(&self, text: &str) {
        if self.quiet {
            return;
        }
        match self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(b) => b.println(text),
            None => say!("{text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_that_of_the_last_seconds_not_since_the_start() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = Rate::default();
        assert_eq!(r.at(0, at(0)), None, "no history yet");
        // 100 MB/s for ten seconds, drawn every 250 ms.
        for i in 1..=40 {
            r.at(i * 25_000_000, at(i * 250));
        }
        let fast = r.at(40 * 25_000_000, at(10_000)).unwrap();
        assert!((fast - 100e6).abs() < 1e6, "{fast}");
        // Then a stall: four seconds later, nothing more done.
        for i in 41..=56 {
            r.at(40 * 25_000_000, at(i * 250));
        }
        let stalled = r.at(40 * 25_000_000, at(14_000)).unwrap();
        assert!(
            stalled < 1e6,
            "a stall is a rate near zero, not 70 MB/s: {stalled}"
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(0.2), "1 s");
        assert_eq!(duration(59.0), "59 s");
        assert_eq!(duration(200.0), "3 min 20 s");
        assert_eq!(duration(7500.0), "2 h 05 min");
    }
}
