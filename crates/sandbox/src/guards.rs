//! Guards for native work that no interrupt reaches.
//!
//! RustPython looks for interrupts between bytecode instructions, so a call inside one long
//! native operation cannot be stopped: a worker process is killed, an in-process thread can
//! only be abandoned, burning a core until the operation ends. These guards cover the ways such
//! work starts from a few bytes of source, by wrapping slots of the builtin types (once per thread:
//! the types are shared by the interpreters of a thread, and the wrappers do nothing outside a
//! call):
//! - native loops over iterators (`max(range(10**11))`, `list(itertools.count())`,
//!   `max(iter(int, 1))`): the range, `itertools` and callable (`iter(f, sentinel)`) iterators
//!   check the call's deadline and memory budget every [`CHECK_EVERY`] items and raise the
//!   call's interrupt;
//! - integer powers and left shifts whose result would have more than [`MAX_INT_BITS`] bits are
//!   refused with `MemoryError` before they run (`7 ** 10**8` would take minutes);
//! - `time.sleep` sleeps in slices and looks at the call's deadline between them (replaced in
//!   each interpreter: modules are not shared);
//! - bytecode written by hand: RustPython does not verify bytecode, and running a crafted
//!   `co_code` can crash the process (seen: a segfault in frame teardown a few calls later), so
//!   the `code` constructor is refused and `code.replace` may only rename (`co_name`,
//!   `co_qualname`, `co_filename`, `co_firstlineno`).
//!
//! - source nested past the call's `max_nesting` ([`crate::depth`]) given to `exec`, `eval` or
//!   `compile` (so `ast.parse` too) or `symtable.symtable`, and syntax trees that deep given to `compile`, raise
//!   `RecursionError` before the parser or compiler could overflow the native stack.
//!
//! Catastrophic regular expressions, big `math.factorial` / `comb` / `perm` results and code
//! objects from `marshal.loads` are refused by the prelude (`py/prelude.py`).

use std::cell::{Cell, OnceCell};
use std::time::Duration;

use web_time::Instant;

use rustpython_vm::builtins::{PyByteArray, PyBytes, PyInt, PyList, PyStr, PyTuple, PyType};
use rustpython_vm::function::FuncArgs;
use rustpython_vm::protocol::PyIterReturn;
use rustpython_vm::{AsObject, Py, PyObject, PyObjectRef, PyResult, VirtualMachine};

use crate::call::current_call_must_stop;

/// Items between two checks in a guarded iterator.
pub const CHECK_EVERY: u32 = 1024;

/// Largest integer result of `**` and `<<`: 2^23 bits, about 2.5 million decimal digits (1 MiB).
/// The biggest such power takes a fraction of a second (measured: `3 ** 40_000_000`, 2^26 bits,
/// 2.1 s on a 2-vCPU AMD EPYC), and a number past it is no tool answer.
pub const MAX_INT_BITS: f64 = (1u64 << 23) as f64;

type IterNext = fn(&PyObject, &VirtualMachine) -> PyResult<PyIterReturn>;
type Ternary = fn(&PyObject, &PyObject, &PyObject, &VirtualMachine) -> PyResult;
type Binary = fn(&PyObject, &PyObject, &VirtualMachine) -> PyResult;

/// The slots as they were: per guarded iterator type (by address) its `__next__`, and int's
/// power and left shift.
struct Originals {
    iternext: Vec<(usize, IterNext)>,
    power: Ternary,
    lshift: Binary,
    code_replace: PyObjectRef,
}

/// What `code.replace` may still change.
const CODE_RENAMES: &[&str] = &["co_name", "co_qualname", "co_filename", "co_firstlineno"];

thread_local! {
    /// The slots the guards replaced, per thread: RustPython is built without `threading`, so each
    /// thread has its own builtin types (and its own GC lists: no interpreter waits on another's
    /// collection), shared by the interpreters built on it.
    static ORIGINALS: OnceCell<&'static Originals> = const { OnceCell::new() };
}

/// The iterator types whose native loops are guarded.
const ITERTOOLS: &[&str] = &["count", "repeat", "cycle", "product", "permutations", "combinations", "combinations_with_replacement", "accumulate"];

/// Installs the guards: the type slots once per thread, `time.sleep` and the compiling builtins
/// in each interpreter. Called while building each interpreter.
pub(crate) fn install(vm: &VirtualMachine, max_nesting: usize) -> PyResult<()> {
    let time = vm.import("time", 0)?;
    time.set_attr("sleep", vm.new_function("sleep", guarded_sleep), vm)?;
    #[cfg(target_arch = "wasm32")]
    browser_clock(vm, &time)?;
    guard_compilers(vm, max_nesting)?;
    if ORIGINALS.with(|o| o.get().is_some()) {
        return Ok(());
    }
    // `iter(int, 1)` calls a native function until it returns 1: `max(iter(int, 1))` never ends.
    let mut types: Vec<&Py<PyType>> = vec![vm.ctx.types.range_iterator_type, vm.ctx.types.long_range_iterator_type, vm.ctx.types.callable_iterator];
    let itertools = vm.import("itertools", 0)?;
    let mut owned = Vec::new();
    for name in ITERTOOLS {
        let typ = itertools.get_attr(*name, vm)?.downcast::<PyType>().map_err(|_| vm.new_type_error(format!("itertools.{name} is not a type")))?;
        owned.push(typ);
    }
    types.extend(owned.iter().map(|t| &**t));
    let int_slots = &vm.ctx.types.int_type.slots.as_number;
    let power = int_slots.power.load().ok_or_else(|| vm.new_type_error("int has no power slot"))?;
    let lshift = int_slots.lshift.load().ok_or_else(|| vm.new_type_error("int has no lshift slot"))?;
    let mut iternext = Vec::new();
    for typ in &types {
        if let Some(next) = typ.slots.iternext.load() {
            iternext.push((type_addr(typ), next));
        }
    }
    let code_type = vm.ctx.types.code_type;
    let code_replace = code_type.as_object().get_attr("replace", vm)?;
    // Leaked like the types themselves, which live as long as their thread.
    let originals: &'static Originals = Box::leak(Box::new(Originals { iternext, power, lshift, code_replace }));
    if ORIGINALS.with(|o| o.set(originals).is_ok()) {
        code_type.slots.new.store(Some(refuse_code_new));
        code_type.set_attr(vm.ctx.intern_str("replace"), vm.new_method("replace", code_type, guarded_code_replace).into());
        for typ in &types {
            typ.slots.iternext.store(Some(guarded_next));
        }
        int_slots.power.store(Some(guarded_power));
        int_slots.right_power.store(Some(guarded_power));
        int_slots.lshift.store(Some(guarded_lshift));
        int_slots.right_lshift.store(Some(guarded_lshift));
    }
    Ok(())
}

/// `compile`, `exec`, `eval` and `symtable.symtable` refuse source (or, for `compile`, a syntax tree) nested past
/// `max_nesting` with the `RecursionError` the compiler gives, before parsing it. Native
/// wrappers, so the caller's frame (whose globals `exec` defaults to) is unchanged.
fn guard_compilers(vm: &VirtualMachine, max_nesting: usize) -> PyResult<()> {
    let ast_type = vm.import("_ast", 0)?.get_attr("AST", vm)?;
    let symtable: PyObjectRef = vm.import("_symtable", 0)?;
    let builtins: PyObjectRef = vm.builtins.clone().into();
    for (module, name) in [(&builtins, "compile"), (&builtins, "exec"), (&builtins, "eval"), (&symtable, "symtable")] {
        let original = module.get_attr(name, vm)?;
        let ast_type = ast_type.clone();
        let wrapped = vm.new_function(name, move |args: FuncArgs, vm: &VirtualMachine| -> PyResult {
            if let Some(source) = args.args.first().or_else(|| args.kwargs.get("source")) {
                let depth = source_depth(source, &ast_type, max_nesting, vm)?;
                if depth > max_nesting {
                    return Err(vm.new_exception_msg(vm.ctx.exceptions.recursion_error.to_owned(), crate::depth::TOO_DEEP.into()));
                }
            }
            original.call(args, vm)
        });
        module.set_attr(name, wrapped, vm)?;
    }
    Ok(())
}

/// The nesting bound of source text, or the depth of a syntax tree (walked without recursion,
/// stopping past `max`, so a tree that contains itself ends too, and looking at the call's
/// deadline as the guarded iterators do: a tree that shares nodes can have exponentially many
/// paths); 0 for anything else.
fn source_depth(source: &PyObject, ast_type: &PyObject, max: usize, vm: &VirtualMachine) -> PyResult<usize> {
    if let Some(text) = source.downcast_ref::<PyStr>() {
        return Ok(crate::depth::nesting_bound_bytes(text.as_bytes()));
    }
    if let Some(bytes) = source.downcast_ref::<PyBytes>() {
        return Ok(crate::depth::nesting_bound_bytes(bytes.as_bytes()));
    }
    if let Some(bytes) = source.downcast_ref::<PyByteArray>() {
        return Ok(crate::depth::nesting_bound_bytes(&bytes.borrow_buf()));
    }
    if !source.is_instance(ast_type, vm)? {
        return Ok(0);
    }
    let mut deepest = 0;
    let mut todo: Vec<(PyObjectRef, usize)> = vec![(source.to_owned(), 1)];
    let mut visited = 0u32;
    while let Some((node, depth)) = todo.pop() {
        visited = visited.wrapping_add(1);
        if visited.is_multiple_of(CHECK_EVERY)
            && let Some(exc) = current_call_must_stop(vm)
        {
            return Err(exc);
        }
        deepest = deepest.max(depth);
        if deepest > max {
            break;
        }
        let Ok(fields) = node.get_attr("_fields", vm) else { continue };
        let Some(fields) = fields.downcast_ref::<PyTuple>() else { continue };
        for field in fields.iter() {
            let Some(name) = field.downcast_ref::<PyStr>() else { continue };
            let Ok(value) = node.get_attr(name, vm) else { continue };
            if let Some(list) = value.downcast_ref::<PyList>() {
                todo.extend(list.borrow_vec().iter().filter(|v| v.is_instance(ast_type, vm).unwrap_or(false)).map(|v| (v.clone(), depth + 1)));
            } else if value.is_instance(ast_type, vm)? {
                todo.push((value, depth + 1));
            }
        }
    }
    Ok(deepest)
}

fn type_addr(typ: &Py<PyType>) -> usize {
    typ as *const Py<PyType> as usize
}

fn originals() -> &'static Originals {
    ORIGINALS.with(|o| *o.get().expect("guards are installed before they are reached"))
}

thread_local! {
    static ITEMS: Cell<u32> = const { Cell::new(0) };
}

fn guarded_next(zelf: &PyObject, vm: &VirtualMachine) -> PyResult<PyIterReturn> {
    let count = ITEMS.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n
    });
    if count.is_multiple_of(CHECK_EVERY)
        && let Some(exc) = current_call_must_stop(vm)
    {
        return Err(exc);
    }
    // A subclass (of `itertools.count`, say) inherited the wrapper: find its guarded base.
    let iternext = &originals().iternext;
    let next = zelf
        .class()
        .iter_base_chain()
        .find_map(|t| iternext.iter().find(|(addr, _)| *addr == type_addr(t)).map(|(_, f)| *f))
        .expect("only guarded iterator types and their subclasses carry the wrapper");
    next(zelf, vm)
}

/// How long `time.sleep` sleeps between two looks at the call's deadline.
const SLEEP_SLICE: Duration = Duration::from_millis(5);

/// `time.sleep` in slices that stop when the call must. Its interrupt cannot be relied on here:
/// RustPython's "signal pending" flag is one per process, and an interpreter busy on another
/// thread clears it at its next instruction, so one that runs an instruction only every slice
/// may never see it.
fn guarded_sleep(seconds: PyObjectRef, vm: &VirtualMachine) -> PyResult<()> {
    let type_name = seconds.class().name().to_owned();
    // The argument errors CPython gives.
    let length = seconds.try_into_value::<Duration>(vm).map_err(|e| {
        let message = e.args().as_slice().first().and_then(|arg| arg.str(vm).ok());
        if e.class().is(vm.ctx.exceptions.value_error) && message.is_some_and(|m| m.as_bytes() == b"negative duration") {
            vm.new_value_error("sleep length must be non-negative")
        } else if e.class().is(vm.ctx.exceptions.type_error) {
            vm.new_type_error(format!("'{type_name}' object cannot be interpreted as an integer or float"))
        } else {
            e
        }
    })?;
    let end = Instant::now().checked_add(length);
    loop {
        if let Some(stop) = current_call_must_stop(vm) {
            return Err(stop);
        }
        vm.check_signals()?;
        let left = end.map_or(SLEEP_SLICE, |end| end.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            return Ok(());
        }
        pause(left.min(SLEEP_SLICE));
    }
}

/// Waits `length` on this thread.
#[cfg(not(target_arch = "wasm32"))]
fn pause(length: Duration) {
    std::thread::sleep(length);
}

/// A browser thread cannot sleep: the slice passes on the clock instead.
#[cfg(target_arch = "wasm32")]
fn pause(length: Duration) {
    let end = Instant::now() + length;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

/// `time.monotonic`, `time.perf_counter` (and their `_ns` forms) read the browser's monotonic
/// clock: RustPython's own read the host clock, which traps on wasm32.
#[cfg(target_arch = "wasm32")]
fn browser_clock(vm: &VirtualMachine, time: &PyObjectRef) -> PyResult<()> {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    fn since_origin() -> Duration {
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
    for name in ["monotonic", "perf_counter"] {
        time.set_attr(name, vm.new_function(name, || since_origin().as_secs_f64()), vm)?;
    }
    for name in ["monotonic_ns", "perf_counter_ns"] {
        time.set_attr(name, vm.new_function(name, || since_origin().as_nanos() as u64), vm)?;
    }
    Ok(())
}

fn refuse_code_new(_cls: rustpython_vm::builtins::PyTypeRef, _args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    Err(vm.new_runtime_error("building code objects is disabled in the sandbox: bytecode written by hand can crash the interpreter"))
}

fn guarded_code_replace(args: FuncArgs, vm: &VirtualMachine) -> PyResult {
    if let Some(name) = args.kwargs.keys().find(|k| !k.as_str().is_ok_and(|k| CODE_RENAMES.contains(&k))) {
        let name = name.as_str().unwrap_or("?");
        return Err(vm.new_runtime_error(format!("code.replace({name}=...) is disabled in the sandbox: bytecode written by hand can crash the interpreter (allowed: {})", CODE_RENAMES.join(", "))));
    }
    originals().code_replace.call(args, vm)
}

fn refuse(vm: &VirtualMachine, what: &str, bits: f64) -> rustpython_vm::builtins::PyBaseExceptionRef {
    let digits = bits * std::f64::consts::LOG10_2;
    let max_digits = MAX_INT_BITS * std::f64::consts::LOG10_2;
    vm.new_memory_error(format!("{what} refused by the sandbox: the result would have about {digits:.3e} decimal digits, more than its limit of {max_digits:.3e}"))
}

fn guarded_power(a: &PyObject, b: &PyObject, modulus: &PyObject, vm: &VirtualMachine) -> PyResult {
    if vm.is_none(modulus)
        && let (Some(base), Some(exp)) = (a.downcast_ref::<PyInt>(), b.downcast_ref::<PyInt>())
    {
        let exp = exp.as_bigint();
        let base = base.as_bigint();
        let exp_f = malachite_to_f64(exp);
        // |base| <= 1 and negative exponents (floats) stay small.
        if exp_f > 0.0 && base.bits() > 1 {
            let log2_base = match malachite_to_f64(base).abs() {
                b if b.is_finite() => b.log2(),
                _ => base.bits() as f64,
            };
            let bits = log2_base * exp_f;
            if bits > MAX_INT_BITS {
                return Err(refuse(vm, "this power", bits));
            }
        }
    }
    (originals().power)(a, b, modulus, vm)
}

fn guarded_lshift(a: &PyObject, b: &PyObject, vm: &VirtualMachine) -> PyResult {
    if let (Some(value), Some(shift)) = (a.downcast_ref::<PyInt>(), b.downcast_ref::<PyInt>()) {
        let bits = value.as_bigint().bits() as f64 + malachite_to_f64(shift.as_bigint());
        if value.as_bigint().bits() > 0 && bits > MAX_INT_BITS {
            return Err(refuse(vm, "this shift", bits));
        }
    }
    (originals().lshift)(a, b, vm)
}

fn malachite_to_f64(x: &malachite_bigint::BigInt) -> f64 {
    num_traits::ToPrimitive::to_f64(x).unwrap_or(f64::INFINITY)
}
