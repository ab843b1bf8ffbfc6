//! Where relative names resolve: the rstar2 checkout this crate was built from (configs/,
//! models/, data/, and target/pylib for the tool environment's sympy and mpmath).

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/train lives in the workspace").to_path_buf()
}

/// The folder where the unpacked sympy and mpmath live: `target/pylib`.
pub fn pylib_dir() -> PathBuf {
    workspace_root().join("target").join("pylib")
}

/// Whether `dir` holds the unpacked sympy and mpmath.
pub fn has_pylib(dir: &Path) -> bool {
    dir.join("sympy").join("__init__.py").is_file() && dir.join("mpmath").join("__init__.py").is_file()
}

/// Relative paths are taken from the workspace root unless they exist from here, so commands
/// work from any directory.
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() { path.to_path_buf() } else { workspace_root().join(path) }
}
