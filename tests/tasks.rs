//! The default's SFT data: every synthetic program (right and wrong) run in the sandbox against
//! the answers computed in Rust, and the share of wrong programs the traces hold, per kind.

use std::collections::BTreeMap;

use rstar2::sandbox::{Sandbox, SandboxConfig, Status, ToolCall};
use rstar2::tasks::sft::{SftMix, build_traces};
use rstar2::tasks::synth::{FLAWED_KINDS, KINDS, Split, SynthConfig, generate};

fn sandbox() -> Sandbox {
    let mut config = SandboxConfig::in_process();
    config.workers = 2;
    Sandbox::new(config).expect("sandbox starts")
}

#[test]
fn every_wrong_program_prints_its_own_wrong_answer() {
    let sandbox = sandbox();
    let tasks = generate(&SynthConfig::default(), Split::Train, 360, 11).unwrap();
    let mut flawed_per_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &tasks {
        let right = sandbox.run_blocking(ToolCall::new(t.code.clone().unwrap()));
        assert_eq!((right.status, right.stdout.trim()), (Status::Ok, t.answer.as_str()), "{}: {}", t.id, t.question);
        let Some(f) = &t.flawed else {
            continue;
        };
        *flawed_per_kind.entry(t.kind.as_str()).or_default() += 1;
        let wrong = sandbox.run_blocking(ToolCall::new(f.code.clone()));
        assert_eq!(wrong.status, Status::Ok, "{}: {} {}", t.id, f.code, wrong.stderr);
        assert_eq!(wrong.stdout.trim(), f.answer, "{}: the wrong program {:?} ({})", t.id, f.code, f.bug);
        assert_ne!(f.answer, t.answer, "{}: the wrong program gives the right answer", t.id);
    }
    // Every kind of FLAWED_KINDS has its wrong program on (nearly) every problem; the others none.
    for kind in KINDS {
        let of_kind = tasks.iter().filter(|t| t.kind == kind).count();
        let flawed = flawed_per_kind.get(kind).copied().unwrap_or(0);
        if FLAWED_KINDS.contains(&kind) {
            assert!(flawed * 10 >= of_kind * 9, "{kind}: {flawed} of {of_kind} problems have a wrong program");
        } else {
            assert_eq!(flawed, 0, "{kind}");
        }
    }
}

#[test]
fn traces_hold_the_configured_share_of_wrong_programs_per_kind() {
    let sandbox = sandbox();
    let tasks = generate(&SynthConfig { levels: vec![1, 2], ..Default::default() }, Split::Train, 1200, 3).unwrap();
    let chat = rstar2::train::TrainConfig::load(None).unwrap().chat;
    let mix = SftMix { direct: 0.05, retry: 0.15, wrong: 0.5 };
    let traces = build_traces(&tasks, &sandbox, &chat, &mix, 9).unwrap();
    assert_eq!(traces.len(), tasks.len());
    // (traces that call the tool on a problem with a wrong program, of them wrong) per kind.
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (task, trace) in tasks.iter().zip(&traces) {
        assert_eq!(task.id, trace.id);
        let text = trace.text();
        let boxed = text.rsplit("\\boxed{").next().unwrap().split('}').next().unwrap();
        if trace.flawed {
            let f = task.flawed.as_ref().expect("a wrong trace has a wrong program");
            assert!(text.contains(&rstar2::tasks::sft::tool_call_text(&f.code)), "{}: the wrong program is the one called", task.id);
            assert_eq!(boxed, f.answer, "{}: the trace boxes what the wrong program printed", task.id);
            assert_ne!(boxed, task.answer, "{}", task.id);
        } else {
            assert_eq!(boxed, task.answer, "{}: a trace that is not wrong boxes the answer", task.id);
        }
        let calls_tool = text.contains("<tool_call>");
        if calls_tool && task.flawed.is_some() {
            let slot = counts.entry(task.kind.as_str()).or_default();
            slot.0 += 1;
            slot.1 += usize::from(trace.flawed);
        }
        if !FLAWED_KINDS.contains(&task.kind.as_str()) {
            assert!(!trace.flawed, "{}", task.id);
        }
    }
    for kind in FLAWED_KINDS {
        let (n, wrong) = counts[kind];
        // Binomial(n, 0.5): within 4 standard deviations of n / 2.
        let sd = (n as f64 * 0.25).sqrt();
        assert!((wrong as f64 - n as f64 * 0.5).abs() <= 4.0 * sd, "{kind}: {wrong} of {n} wrong, expected {:.0} ± {:.0}", n as f64 * 0.5, 4.0 * sd);
        assert!(n >= 60, "{kind}: only {n} traces");
    }
    // wrong = 0 writes none.
    let none = build_traces(&tasks[..200], &sandbox, &chat, &SftMix { wrong: 0.0, ..mix }, 9).unwrap();
    assert!(none.iter().all(|t| !t.flawed));
}
