//! Generated hostile programs: deep and long nesting of every kind of Python syntax node and of
//! runtime structures, at depths 10^2..10^7, through both pools. The process must live (this
//! test binary is the in-process host) and every next call must answer. `RSTAR2_SOAK=1` adds
//! random mixtures of many shapes at more depths.

use std::sync::OnceLock;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rstar2::sandbox::{Sandbox, SandboxConfig, Status, ToolCall, ToolResult, WorkerCommand};

fn pool(in_process: bool, max_nesting: Option<usize>) -> Sandbox {
    let mut config = if in_process { SandboxConfig::in_process() } else { SandboxConfig::process(WorkerCommand::program(env!("CARGO_BIN_EXE_rstar2-sandbox-worker"))) };
    config.workers = 2;
    config.interpreter.limits.timeout = Duration::from_secs(10);
    config.interpreter.limits.memory_bytes = 1 << 30;
    if let Some(n) = max_nesting {
        config.interpreter.limits.max_nesting = n;
    }
    Sandbox::new(config).expect("sandbox starts")
}

fn in_process() -> &'static Sandbox {
    static POOL: OnceLock<Sandbox> = OnceLock::new();
    POOL.get_or_init(|| pool(true, None))
}

fn processes() -> &'static Sandbox {
    static POOL: OnceLock<Sandbox> = OnceLock::new();
    POOL.get_or_init(|| pool(false, None))
}

/// Python that builds source of one syntax shape nested `{n}` deep and compiles it, through
/// `exec`, `eval`, `compile`, `ast.parse` or `symtable`.
const SOURCE_SHAPES: &[(&str, &str)] = &[
    ("unary minus", "exec('-' * {n} + '1')"),
    ("unary not", "exec('not ' * {n} + '1')"),
    ("unary invert", "eval('~' * {n} + '1')"),
    ("binary add", "exec('1' + '+1' * {n})"),
    ("power (right-associative)", "exec('2' + '**2' * {n})"),
    ("boolean or", "exec('1' + ' or 1' * {n})"),
    ("comparison", "exec('1' + '<1' * {n})"),
    ("attribute", "exec('a' + '.b' * {n})"),
    ("call", "exec('f' + '()' * {n})"),
    ("subscript", "exec('x' + '[0]' * {n})"),
    ("lambda", "exec('lambda:' * {n} + '1')"),
    ("ternary", "exec('1' + ' if 1 else 1' * {n})"),
    ("await", "exec('async def f():\\n    ' + 'await ' * {n} + 'x')"),
    ("parentheses", "exec('(' * {n} + '1' + ')' * {n})"),
    ("lists", "exec('[' * {n} + ']' * {n})"),
    ("generator expressions", "exec('(x for x in ' * {n} + 'y' + ')' * {n})"),
    ("f-strings", "exec(\"f'{\" * {n} + '1' + \"}'\" * {n})"),
    ("starred", "exec('[' + '*' * {n} + 'x]')"),
    ("walrus", "exec('(' + 'a:=' * {n} + '1)')"),
    ("compile bytes", "compile(b'x' + b'.y' * {n}, 's', 'exec')"),
    ("ast.parse", "import ast\nast.parse('-' * {n} + '1')"),
    ("symtable", "import symtable\nsymtable.symtable('-' * {n} + '1', 's', 'exec')"),
    ("nested blocks (indentation)", "exec(''.join(' ' * i + 'if 1:\\n' for i in range(min({n}, 3000))) + ' ' * min({n}, 3000) + 'pass')"),
    ("nested functions", "exec(''.join(' ' * i + 'def f():\\n' for i in range(min({n}, 3000))) + ' ' * min({n}, 3000) + 'pass')"),
    (
        "syntax tree built by hand",
        "import ast\ne = ast.Constant(1)\nfor _ in range(min({n}, 100000)):\n    e = ast.UnaryOp(ast.USub(), e)\ncompile(ast.fix_missing_locations(ast.Expression(e)), 's', 'eval')",
    ),
    ("regex groups", "import re\nre.compile('(?:' * {n} + 'a' + ')' * {n})"),
];

/// Python that builds a runtime structure `{n}` deep and walks it natively.
const RUNTIME_SHAPES: &[(&str, &str)] = &[
    ("nested lists: repr", "a = []\nfor _ in range({n}):\n    a = [a]\nrepr(a)"),
    ("nested lists: ==", "a, b = [], []\nfor _ in range({n}):\n    a, b = [a], [b]\na == b"),
    ("nested tuples: hash", "a = ()\nfor _ in range({n}):\n    a = (a,)\nhash(a)"),
    ("nested dicts: json", "import json\na = {}\nfor _ in range({n}):\n    a = {'k': a}\njson.dumps(a)"),
    ("nested lists: deepcopy", "import copy\na = []\nfor _ in range({n}):\n    a = [a]\ncopy.deepcopy(a)"),
    ("nested lists: pickle", "import pickle\na = []\nfor _ in range({n}):\n    a = [a]\npickle.dumps(a)"),
    ("nested lists: dropped", "a = []\nfor _ in range({n}):\n    a = [a]\ndel a"),
    ("exception context chain", "e = None\nfor i in range(min({n}, 100000)):\n    e2 = ValueError(i)\n    e2.__context__ = e\n    e = e2\nraise e"),
    ("map chain", "m = [1]\nfor _ in range({n}):\n    m = map(abs, m)\nlist(m)"),
    ("generator chain", "g = iter([1])\nfor _ in range({n}):\n    g = (x for x in g)\nnext(g)"),
    ("zip chain", "z = [1]\nfor _ in range({n}):\n    z = zip(z)\nlist(z)"),
    ("Python recursion", "import sys\nsys.setrecursionlimit(50000)\nf = lambda k: k and f(k - 1)\nf({n})"),
];

/// What a hostile call may end as: a clean Python error, a refusal, or (the last line: a native
/// stack overflow on an in-process thread) `crashed` with the reason.
fn acceptable(r: &ToolResult) -> bool {
    match r.status {
        Status::Ok | Status::Error | Status::MemoryLimit | Status::Timeout => true,
        Status::Crashed => r.stderr.contains("native stack overflowed") || r.stderr.contains("worker"),
        _ => false,
    }
}

fn run_and_check_alive(sandbox: &Sandbox, what: &str, code: &str) -> ToolResult {
    let r = sandbox.run_blocking(ToolCall::new(code));
    assert!(acceptable(&r), "{what}: {r:?}");
    let next = sandbox.run_blocking(ToolCall::new("print(6 * 7)"));
    assert_eq!((next.status, next.stdout.as_str()), (Status::Ok, "42\n"), "{what}: the next call");
    r
}

fn depths() -> Vec<usize> {
    let soak = std::env::var_os("RSTAR2_SOAK").is_some();
    if soak { vec![100, 1_000, 10_000, 100_000, 1_000_000, 3_000_000, 10_000_000] } else { vec![100, 10_000, 1_000_000, 10_000_000] }
}

#[test]
fn deep_source_of_every_node_kind_is_refused_cleanly_in_both_pools() {
    for (label, sandbox) in [("in-process", in_process()), ("processes", processes())] {
        for (shape, template) in SOURCE_SHAPES {
            for n in depths() {
                let r = run_and_check_alive(sandbox, &format!("{label} {shape} {n}"), &template.replace("{n}", &n.to_string()));
                // Source this deep never reaches the parser's native recursion: the error is
                // Python's, not a lost interpreter.
                if n >= 10_000 {
                    assert_ne!(r.status, Status::Crashed, "{label} {shape} {n}: {r:?}");
                }
                if n >= 1_000_000 && !shape.contains("regex") && !shape.contains("blocks") && !shape.contains("functions") {
                    assert!(r.stderr.contains("RecursionError") || r.stderr.contains("SyntaxError") || r.stderr.contains("MemoryError"), "{label} {shape} {n}: {r:?}");
                }
            }
        }
    }
}

#[test]
fn deep_runtime_structures_never_take_down_the_host() {
    for (label, sandbox) in [("in-process", in_process()), ("processes", processes())] {
        for (shape, template) in RUNTIME_SHAPES {
            for n in [100usize, 10_000, 1_000_000] {
                run_and_check_alive(sandbox, &format!("{label} {shape} {n}"), &template.replace("{n}", &n.to_string()));
            }
        }
    }
}

/// The last line on its own: with the source check switched off, source a million levels deep
/// overflows an in-process thread's native stack; the thread parks, the call is answered
/// `crashed` with the reason, the pool counts the lost interpreter and keeps serving.
#[test]
fn a_native_stack_overflow_costs_one_interpreter_not_the_process() {
    let sandbox = pool(true, Some(usize::MAX));
    for (i, code) in ["exec('-' * 1_000_000 + '1')", "m = [1]\nfor _ in range(1_000_000):\n    m = map(abs, m)\nlist(m)"].iter().enumerate() {
        let r = sandbox.run_blocking(ToolCall::new(*code));
        assert_eq!(r.status, Status::Crashed, "{r:?}");
        assert!(r.stderr.contains("native stack overflowed"), "{r:?}");
        assert_eq!(sandbox.lost_interpreters(), i as u64 + 1);
        let next = sandbox.run_blocking(ToolCall::new("print(sum(range(10)))"));
        assert_eq!((next.status, next.stdout.as_str()), (Status::Ok, "45\n"));
    }
}

/// Random mixtures: each level wraps the last in one of many syntax shapes, so unknown
/// combinations meet the guards too.
#[test]
fn random_mixtures_of_nesting_are_refused_or_run() {
    let wrappers: &[(&str, &str)] = &[
        ("-", ""),
        ("not ", ""),
        ("~", ""),
        ("(", ")"),
        ("[", "]"),
        ("{", "}"),
        ("f(", ")"),
        ("", ".a"),
        ("", "[0]"),
        ("", "()"),
        ("lambda:", ""),
        ("", "+1"),
        ("", "**2"),
        ("", " if 1 else 0"),
        ("", " or 1"),
        ("", "<1"),
        ("f'{", "}'"),
        ("(x for x in ", ")"),
        ("*", ""),
    ];
    let soak = std::env::var_os("RSTAR2_SOAK").is_some();
    let mut rng = ChaCha8Rng::seed_from_u64(38);
    for case in 0..if soak { 200 } else { 24 } {
        // At most 13 bytes a level: the deepest stays under the 1 MiB input limit.
        let n = [50usize, 500, 5_000, 20_000, 60_000][case % 5];
        let (mut head, mut tail) = (String::new(), String::new());
        for _ in 0..n {
            let (a, b) = wrappers[rng.random_range(0..wrappers.len())];
            head.push_str(a);
            tail.insert_str(0, b);
        }
        let code = format!("{head}1{tail}");
        for sandbox in [in_process(), processes()] {
            let r = run_and_check_alive(sandbox, &format!("mixture {case} ({n} levels)"), &code);
            assert_ne!(r.status, Status::Crashed, "mixture {case}: {r:?}");
        }
    }
}
