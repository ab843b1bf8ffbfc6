//! Progress bars shared by the training phases.

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}").expect("template").progress_chars("=> "));
    bar.set_prefix(prefix.to_string());
    bar
}
