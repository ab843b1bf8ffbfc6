//! Progress bars shared by the training phases (hidden on every MPI rank but rank 0).

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

static HIDDEN: AtomicBool = AtomicBool::new(false);

/// Hides every bar made from now on (ranks other than 0 of a job).
pub fn hide_all() {
    HIDDEN.store(true, Ordering::Relaxed);
}

pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    if HIDDEN.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}").expect("template").progress_chars("=> "));
    bar.set_prefix(prefix.to_string());
    bar
}
