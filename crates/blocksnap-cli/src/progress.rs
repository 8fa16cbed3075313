//! Progress on stderr: a bar on a terminal, nothing otherwise; notes unless --quiet.

use std::io::IsTerminal;
use std::sync::Mutex;

use blocksnap_store::Progress;
use indicatif::{ProgressBar, ProgressStyle};

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
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        if !self.show_bar {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:24}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_message(phase.to_string());
        *self.bar.lock().expect("not poisoned") = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = self.bar.lock().expect("not poisoned").as_ref() {
            b.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
    }

    fn message(&self, text: &str) {
        if self.quiet {
            return;
        }
        match self.bar.lock().expect("not poisoned").as_ref() {
            Some(b) => b.println(text),
            None => say!("{text}"),
        }
    }
}
