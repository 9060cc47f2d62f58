//! Progress of a level: an indicatif bar when stderr is a terminal, otherwise a plain line at
//! most every five seconds (CI logs and files stay readable).

use super::client::RequestRecord;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Progress(Arc<Shown>);

enum Shown {
    Bar(ProgressBar),
    Lines {
        name: String,
        total: Option<usize>,
        done: AtomicUsize,
        errors: AtomicUsize,
        last_line: Mutex<Instant>,
    },
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// `total` requests when the level has a count, else its duration drives a spinner.
    pub fn start(name: String, total: Option<usize>) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(total) => ProgressBar::new(total as u64),
                None => ProgressBar::new_spinner(),
            };
            let template = "{prefix:>28} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_prefix(name);
            bar.enable_steady_tick(Duration::from_millis(200));
            Self(Arc::new(Shown::Bar(bar)))
        } else {
            eprintln!("{name}: started");
            Self(Arc::new(Shown::Lines {
                name,
                total,
                done: AtomicUsize::new(0),
                errors: AtomicUsize::new(0),
                last_line: Mutex::new(Instant::now()),
            }))
        }
    }

    pub fn record(&self, record: &RequestRecord) {
        let failed = record.outcome.error_kind().is_some();
        match &*self.0 {
            Shown::Bar(bar) => {
                bar.inc(1);
                if failed {
                    bar.set_message(format!("error: {:?}", record.outcome));
                }
            }
            Shown::Lines {
                name,
                total,
                done,
                errors,
                last_line,
            } => {
                let done = done.fetch_add(1, Ordering::SeqCst) + 1;
                let errors =
                    errors.fetch_add(usize::from(failed), Ordering::SeqCst) + usize::from(failed);
                let mut last = last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    let total = total.map(|t| format!("/{t}")).unwrap_or_default();
                    eprintln!("{name}: {done}{total} requests done, {errors} errors");
                }
            }
        }
    }

    pub fn finish(&self) {
        match &*self.0 {
            Shown::Bar(bar) => bar.finish(),
            Shown::Lines { name, done, .. } => {
                eprintln!("{name}: {} requests done", done.load(Ordering::SeqCst));
            }
        }
    }
}
