//! Native modules that stand in for the host: an inert `posix` (so `os`, `random`,
//! `statistics`, `traceback` import without touching anything real) and `_sandbox_fs`, the
//! read-only window on one package folder that the importer uses.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// Package folders that `_sandbox_fs.read` may serve, canonicalized.
static PYLIB_ROOTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers `root` as readable and returns its canonical path as the importer should name it.
pub(crate) fn allow_pylib_root(root: &Path) -> Result<String, String> {
    let canonical = root.canonicalize().map_err(|e| format!("package folder {}: {e}", root.display()))?;
    if !canonical.is_dir() {
        return Err(format!("package folder {} is not a directory", root.display()));
    }
    let mut roots = PYLIB_ROOTS.lock().unwrap_or_else(|p| p.into_inner());
    if !roots.contains(&canonical) {
        roots.push(canonical.clone());
    }
    canonical.into_os_string().into_string().map_err(|_| format!("package folder {} is not UTF-8", root.display()))
}

/// Resolves `rel` inside a registered `root`, refusing absolute paths, `..`, and symlinks that
/// lead outside the root.
fn resolve(root: &str, rel: &str) -> Option<PathBuf> {
    let root = PathBuf::from(root);
    if !PYLIB_ROOTS.lock().unwrap_or_else(|p| p.into_inner()).contains(&root) {
        return None;
    }
    let rel = Path::new(rel);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let path = root.join(rel).canonicalize().ok()?;
    (path.starts_with(&root) && path.is_file()).then_some(path)
}

#[rustpython_vm::pymodule]
pub(crate) mod _sandbox_fs {
    use rustpython_vm::builtins::PyStrRef;
    use rustpython_vm::{PyResult, VirtualMachine};

    /// The text of `rel` under `root`, or None when there is no such readable file.
    #[pyfunction]
    fn read(root: PyStrRef, rel: PyStrRef, vm: &VirtualMachine) -> PyResult<Option<String>> {
        let Some(path) = super::resolve(&root.to_string_lossy(), &rel.to_string_lossy()) else {
            return Ok(None);
        };
        std::fs::read_to_string(&path).map(Some).map_err(|e| vm.new_exception_msg(vm.ctx.exceptions.import_error.to_owned(), format!("{}: {e}", rel.to_string_lossy()).into()))
    }
}

#[rustpython_vm::pymodule]
pub(crate) mod posix {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};

    use rustpython_vm::builtins::{PyDictRef, PyTypeRef};
    use rustpython_vm::function::FuncArgs;
    use rustpython_vm::{PyResult, VirtualMachine};

    #[pyattr]
    fn environ(vm: &VirtualMachine) -> PyDictRef {
        vm.ctx.new_dict()
    }

    #[pyattr]
    fn stat_result(vm: &VirtualMachine) -> PyTypeRef {
        vm.ctx.types.tuple_type.to_owned()
    }

    #[pyattr]
    fn _have_functions(vm: &VirtualMachine) -> rustpython_vm::builtins::PyListRef {
        vm.ctx.new_list(Vec::new())
    }

    #[pyattr]
    const F_OK: i32 = 0;
    #[pyattr]
    const R_OK: i32 = 4;
    #[pyattr]
    const W_OK: i32 = 2;
    #[pyattr]
    const X_OK: i32 = 1;
    #[pyattr]
    const O_RDONLY: i32 = 0;
    #[pyattr]
    const O_WRONLY: i32 = 1;
    #[pyattr]
    const O_RDWR: i32 = 2;
    #[pyattr]
    const O_CREAT: i32 = 0o100;
    #[pyattr]
    const O_EXCL: i32 = 0o200;
    #[pyattr]
    const O_TRUNC: i32 = 0o1000;
    #[pyattr]
    const O_APPEND: i32 = 0o2000;

    /// Random bytes for `random`'s seeding; never the host's entropy device.
    #[pyfunction]
    fn urandom(size: isize, vm: &VirtualMachine) -> PyResult<Vec<u8>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if size < 0 {
            return Err(vm.new_value_error("negative argument not allowed"));
        }
        let mut out = Vec::with_capacity(size as usize);
        while out.len() < size as usize {
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            out.extend_from_slice(&h.finish().to_le_bytes());
        }
        out.truncate(size as usize);
        Ok(out)
    }

    #[pyfunction]
    fn getpid() -> i32 {
        1
    }

    #[pyfunction]
    fn cpu_count() -> i32 {
        1
    }

    #[pyfunction]
    fn getcwd() -> String {
        "/".to_owned()
    }

    #[pyfunction]
    fn fspath(path: rustpython_vm::PyObjectRef) -> rustpython_vm::PyObjectRef {
        path
    }

    /// Environment changes only ever touch the empty stand-in `environ`.
    #[pyfunction]
    fn putenv(_args: FuncArgs) {}

    #[pyfunction]
    fn unsetenv(_args: FuncArgs) {}

    fn denied(vm: &VirtualMachine) -> rustpython_vm::builtins::PyBaseExceptionRef {
        vm.new_exception_msg(vm.ctx.exceptions.permission_error.to_owned(), "file system access is disabled in this sandbox".into())
    }

    #[pyfunction]
    fn stat(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn lstat(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn fstat(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn open(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn scandir(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn listdir(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn unlink(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn remove(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn rmdir(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn mkdir(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn readlink(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
    #[pyfunction]
    fn access(_args: FuncArgs, vm: &VirtualMachine) -> PyResult<()> {
        Err(denied(vm))
    }
}
