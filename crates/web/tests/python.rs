//! The Python tool inside the page, in a real browser: a call answers as natively, and a call
//! that loops past its deadline or allocates past its budget is answered `timeout` or
//! `memory_limit` (checked inside the interpreter: a page has no watchdog thread) while the
//! page, and the tool, go on.
#![cfg(target_arch = "wasm32")]

use rstar2_sandbox::{Status, ToolCall};
use rstar2_web::{PythonTool, call_tool_function};
use wasm_bindgen_test::wasm_bindgen_test;

wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

fn result(tool: &mut PythonTool, code: &str) -> rstar2_sandbox::ToolResult {
    serde_json::from_str(&tool.run(&serde_json::to_string(&ToolCall::new(code)).unwrap())).unwrap()
}

#[wasm_bindgen_test]
fn a_call_that_is_not_a_tool_call_is_refused() {
    let mut tool = PythonTool::new(4000, 256).unwrap();
    let r: rstar2_sandbox::ToolResult = serde_json::from_str(&tool.run("print(1)")).unwrap();
    assert_eq!(r.status, Status::InvalidInput, "{r:?}");
    assert!(r.stderr.contains("not a tool call"), "{r:?}");
    let r: rstar2_sandbox::ToolResult = serde_json::from_str(&tool.run(r#"{"code": "print(input())", "stdin": "hi"}"#)).unwrap();
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "hi\n"), "{r:?}");
}

/// A page's tool function (JavaScript, `(call JSON) => Promise<result JSON>`).
fn tool_function(body: &str) -> js_sys::Function {
    js_sys::Function::new_with_args("call", body)
}

#[wasm_bindgen_test]
async fn a_page_tool_function_answers_the_recipe_or_its_failure_is_a_crash() {
    let call = ToolCall::new("print('hello')");
    // The call reaches the function as JSON; its JSON answer comes back as the result.
    let echo =
        tool_function("const c = JSON.parse(call); return new Promise((ok) => setTimeout(() => ok(JSON.stringify({status: 'ok', stdout: String(c.code.length), stderr: '', elapsed_us: 7})), 10));");
    let r = call_tool_function(&echo, &call).await;
    assert_eq!((r.status, r.stdout.as_str(), r.elapsed_us), (Status::Ok, "14", 7), "{r:?}");
    let timeout = tool_function("return Promise.resolve(JSON.stringify({status: 'timeout', stdout: '', stderr: 'worker ended', elapsed_us: 4000000}));");
    assert_eq!(call_tool_function(&timeout, &call).await.status, Status::Timeout);
    // Every way a function can fail is a crashed call that names the failure.
    for (body, says) in [
        ("return Promise.reject(new Error('worker gone'));", "worker gone"),
        ("throw new Error('no worker');", "no worker"),
        ("return Promise.resolve(42);", "instead of a JSON string"),
        ("return Promise.resolve('{\"status\": \"ok\"}');", "no tool result"),
    ] {
        let r = call_tool_function(&tool_function(body), &call).await;
        assert_eq!(r.status, Status::Crashed, "{body}: {r:?}");
        assert!(r.stderr.contains(says), "{body}: {r:?}");
    }
}

#[wasm_bindgen_test]
fn a_tool_call_answers_as_it_does_natively() {
    let mut tool = PythonTool::new(4000, 256).unwrap();
    let r = result(&mut tool, "x = 6 * 7\nx");
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "42\n"), "{r:?}");
    // The stdlib a rollout's code reaches for, the `posix` shim and the browser clock included.
    let r = result(
        &mut tool,
        "import fractions, math, random, statistics, time\nt = time.monotonic()\nprint(fractions.Fraction(1, 3) + fractions.Fraction(1, 6), math.comb(10, 3), statistics.mean([1, 2, 3, 4]), time.monotonic() >= t)",
    );
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "1/2 120 2.5 True\n"), "{r:?}");
    let r = result(&mut tool, "1 / 0");
    assert_eq!(r.status, Status::Error);
    assert!(r.stderr.ends_with("ZeroDivisionError: division by zero\n"), "{r:?}");
    // Nothing on the host: no sockets (the files a call sees are its own scratch folder's).
    let r = result(&mut tool, "import socket\nsocket.create_connection(('127.0.0.1', 80))");
    assert_eq!(r.status, Status::Error, "{r:?}");
    let r = result(&mut tool, "open('/etc/passwd').read()");
    assert_eq!(r.status, Status::Error, "{r:?}");
    let r = result(&mut tool, "with open('a.txt', 'w') as f:\n    f.write('hi')\nprint(open('a.txt').read())");
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "hi\n"), "{r:?}");
}

#[wasm_bindgen_test]
fn a_call_past_its_deadline_is_answered_timeout_and_the_tool_goes_on() {
    let mut tool = PythonTool::new(500, 256).unwrap();
    for code in ["while True:\n    pass", "n = 0\nwhile True: n += 1", "import time\ntime.sleep(30)", "sum(x * x for x in range(10**12))"] {
        let r = result(&mut tool, code);
        assert_eq!(r.status, Status::Timeout, "{code}: {r:?}");
        assert!(r.stderr.contains("TimeoutError: execution exceeded the time limit of 0.5 s"), "{code}: {r:?}");
        assert!(r.elapsed_us < 5_000_000, "{code}: answered after {} us", r.elapsed_us);
        let r = result(&mut tool, "print('still here')");
        assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "still here\n"), "after {code}: {r:?}");
    }
}

#[wasm_bindgen_test]
fn a_memory_bomb_is_answered_memory_limit_and_the_tool_goes_on() {
    // (Sizes fit wasm32's 32-bit index: `'a' * 10**10` is an OverflowError there, as in a
    // 32-bit CPython.)
    let mut tool = PythonTool::new(20_000, 64).unwrap();
    for code in [
        "x = []\nwhile True:\n    x.append(' ' * 10**6)",
        "s = 'a' * 10**9",
        "x = bytearray(10**9)",
        "x = []\nwhile True:\n    try:\n        x.append(bytearray(10**7))\n    except MemoryError:\n        pass",
    ] {
        let r = result(&mut tool, code);
        assert_eq!(r.status, Status::MemoryLimit, "{code}: {r:?}");
        assert!(r.stderr.contains("MemoryError"), "{code}: {r:?}");
        let r = result(&mut tool, "print(len([0] * 1000))");
        assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "1000\n"), "after {code}: {r:?}");
    }
}

#[wasm_bindgen_test]
fn hostile_code_is_refused_or_stopped_as_natively() {
    // The native suite's cases (`tests/sandbox.rs`) that need no second thread; the one they
    // need (a loop that catches its timeout and loops on) is the page's Web Worker's to end.
    let mut tool = PythonTool::new(1000, 256).unwrap();
    let cases: &[(&str, &[Status])] = &[
        ("import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')", &[Status::Error]),
        ("x = 7 ** (10**8)", &[Status::MemoryLimit]),
        ("def f(n):\n    return f(n + 1)\nf(0)", &[Status::Error, Status::Timeout]),
        ("import types\ntypes.CodeType(0, 0, 0, 0, 0, 0, b'\\xff\\x00', (), (), (), '', '', 0, b'')", &[Status::Error]),
        ("import threading\nt = threading.Thread(target=lambda: None)\nt.start()", &[Status::Error]),
        ("eval('(' * 100000 + ')' * 100000)", &[Status::Error]),
        ("max(range(10**11))", &[Status::Timeout]),
    ];
    for (code, allowed) in cases {
        let r = result(&mut tool, code);
        assert!(allowed.contains(&r.status), "{code:?}: {r:?}");
        assert!(r.elapsed_us < 10_000_000, "{code:?}: answered after {} us", r.elapsed_us);
    }
    let r = result(&mut tool, "print(sum(range(10)))");
    assert_eq!((r.status, r.stdout.as_str()), (Status::Ok, "45\n"), "{r:?}");
}
