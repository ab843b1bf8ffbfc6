//! Where relative names resolve (configs/, models/, data/, runs/, and target/ for caches such as
//! the tool environment's sympy and mpmath), found at run time, never from a compile-time path:
//!
//! 1. the rstar2 checkout holding the current directory (walking up to its root), so a binary
//!    built in one checkout and run in another works on the second one;
//! 2. else `RSTAR2_HOME` if set;
//! 3. else the platform's cache folder (`~/.cache/rstar2` on Linux, `~/Library/Caches/rstar2` on
//!    macOS, `%LOCALAPPDATA%\rstar2` on Windows).
//!
//! A home that is not a checkout gets the built-in configs and model configs (and the tiny
//! tokenizer) written into it on first use, so the default recipe runs from anywhere.
//!
//! ```no_run
//! let root = rstar2_train::paths::workspace_root();
//! assert!(root.join("configs").join("tiny.toml").is_file());
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The files a home needs for the built-in names (`--config tiny`, `models/tiny`, ...), as they
/// are in the checkout this crate was built from.
const DEFAULTS: [(&str, &str); 9] = [
    ("configs/tiny.toml", include_str!("../../../configs/tiny.toml")),
    ("configs/smollm2-135m.toml", include_str!("../../../configs/smollm2-135m.toml")),
    ("configs/smollm2-135m-math.toml", include_str!("../../../configs/smollm2-135m-math.toml")),
    ("configs/smollm2-135m-math-cpu.toml", include_str!("../../../configs/smollm2-135m-math-cpu.toml")),
    ("models/tiny/config.json", include_str!("../../../models/tiny/config.json")),
    ("models/tiny/tokenizer.json", include_str!("../../../models/tiny/tokenizer.json")),
    ("models/smollm2-135m/config.json", include_str!("../../../models/smollm2-135m/config.json")),
    ("models/qwen2.5-0.5b/config.json", include_str!("../../../models/qwen2.5-0.5b/config.json")),
    ("models/qwen3-0.6b/config.json", include_str!("../../../models/qwen3-0.6b/config.json")),
];

/// Whether `dir` is the root of an rstar2 checkout: its `Cargo.toml` is the `rstar2` package's.
pub fn is_checkout(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|manifest| manifest.lines().any(|line| line.trim() == "name = \"rstar2\""))
}

/// The checkout holding `dir`, walking up: `None` outside any.
pub fn checkout_above(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| is_checkout(d)).map(Path::to_path_buf)
}

/// Where relative names resolve (see the module docs); found once per process.
pub fn workspace_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(find_root).clone()
}

fn find_root() -> PathBuf {
    if let Some(root) = std::env::current_dir().ok().and_then(|cwd| checkout_above(&cwd)) {
        return root;
    }
    let home = match std::env::var_os("RSTAR2_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("rstar2"),
    };
    if let Err(e) = install_defaults(&home) {
        eprintln!("warning: could not write the built-in configs into {}: {e}", home.display());
    }
    home
}

/// Writes the built-in configs and model configs into `home` where they are missing (a file the
/// user changed is kept).
pub fn install_defaults(home: &Path) -> anyhow::Result<()> {
    for (name, text) in DEFAULTS {
        let path = home.join(name);
        if !path.exists() {
            std::fs::create_dir_all(path.parent().expect("a relative name has a folder"))?;
            rstar2_model::write_atomic(&path, text.as_bytes()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_checkout_is_found_from_a_folder_inside_it() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = here.ancestors().nth(2).unwrap();
        assert!(is_checkout(root));
        assert!(!is_checkout(here), "crates/train's manifest is not the rstar2 package's");
        assert_eq!(checkout_above(&here.join("src")).as_deref(), Some(root));
    }

    #[test]
    fn every_shipped_config_is_built_in_and_installed_once() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap();
        for entry in std::fs::read_dir(root.join("configs")).unwrap() {
            let name = format!("configs/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(DEFAULTS.iter().any(|(n, _)| *n == name), "{name} is not in paths::DEFAULTS");
        }
        let home = std::env::temp_dir().join(format!("rstar2-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        install_defaults(&home).unwrap();
        assert!(crate::config::TrainConfig::load(Some(&home.join("configs/tiny.toml"))).is_ok());
        std::fs::write(home.join("configs/tiny.toml"), "# mine\n").unwrap();
        install_defaults(&home).unwrap();
        assert_eq!(std::fs::read_to_string(home.join("configs/tiny.toml")).unwrap(), "# mine\n", "a user's edit is kept");
        std::fs::remove_dir_all(&home).unwrap();
    }
}
