//! Verifier regression set: what must match, and the known false positives of other graders
//! (math-verify, the Qwen2.5-Math grader) that must not.

use rstar2_grpo::reward::{AnswerScope, answers_equal, extract_answer, verify};

fn wrap(boxed: &str) -> String {
    format!("<reason>work</reason>\n<answer>The answer is \\boxed{{{boxed}}}.</answer>")
}

fn reward(boxed: &str, truth: &str) -> u8 {
    verify(&wrap(boxed), truth, AnswerScope::AnswerTag, false).reward
}

#[test]
fn equal_answers() {
    for (answer, truth) in [
        ("42", "42"),
        ("-7", "-7"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        ("1,234,567", "1234567"),
        ("1{,}000", "1000"),
        ("\\frac{3}{4}", "3/4"),
        ("\\dfrac{6}{8}", "0.75"),
        ("\\tfrac12", "1/2"),
        ("-\\frac{1}{2}", "-0.5"),
        ("\\frac{-1}{2}", "-1/2"),
        ("\\text{42}", "42"),
        ("\\text{ 42 }", "42"),
        ("$42$", "42"),
        ("42^\\circ", "42"),
        ("42^{\\circ}", "42"),
        ("15\\%", "15"),
        ("x = 5", "5"),
        ("n=12", "12"),
        ("\\left(5\\right)", "5"),
        ("2^{10}", "1024"),
        ("10^{3}", "1000"),
        ("1.5\\times10^{3}", "1500"),
        ("2.5e3", "2500"),
        ("3.0", "3"),
        ("007", "7"),
        ("**73**", "73"),
        ("\\pm 2", "\\pm2"),
    ] {
        assert_eq!(reward(answer, truth), 1, "{answer:?} should equal {truth:?}");
    }
}

#[test]
fn known_false_positives_of_other_graders_are_rejected() {
    for (answer, truth) in [
        ("\\frac{1}{2004!}", "\\frac{1}{2006!}"),
        ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}"),
        ("n=2,3,4", "n=1,2,3"),
        ("\\pm 2021", "2021"),
        ("12:00", "1:00"),
        ("3x-y+13=0", "3x+4y+14=0"),
        ("5", "500"),
        ("5", "0.05"),
        ("(1,2]", "[1,2]"),
        ("123456", "123460"),
        ("2021", "-2021"),
        ("0.3333333333", "1/3"),
        ("1,2", "12"),
    ] {
        assert_eq!(reward(answer, truth), 0, "{answer:?} must not equal {truth:?}");
    }
}

#[test]
fn extraction_rules() {
    // The last \boxed inside the last <answer>; a duplicated \boxed is not concatenated.
    let r = "<answer>\\boxed{840}\\boxed{840}</answer>";
    assert_eq!(extract_answer(r, AnswerScope::AnswerTag).as_deref(), Some("840"));
    assert_eq!(verify(r, "840840", AnswerScope::AnswerTag, false).reward, 0);
    // Nested braces.
    let r = "<answer>\\boxed{\\frac{1}{\\sqrt{2}}}</answer>";
    assert_eq!(extract_answer(r, AnswerScope::AnswerTag).as_deref(), Some("\\frac{1}{\\sqrt{2}}"));
    // \fbox counts; the later of \boxed / \fbox wins.
    assert_eq!(extract_answer("<answer>\\boxed{1} \\fbox{2}</answer>", AnswerScope::AnswerTag).as_deref(), Some("2"));
    // Outside <answer> is ignored by default, found with the option.
    let r = "I think \\boxed{9}. <answer>no box</answer>";
    assert_eq!(extract_answer(r, AnswerScope::AnswerTag), None);
    assert_eq!(extract_answer(r, AnswerScope::Anywhere).as_deref(), Some("9"));
    // The last <answer> block is the one that counts.
    let r = "<answer>\\boxed{1}</answer> wait <answer>\\boxed{2}</answer>";
    assert_eq!(verify(r, "2", AnswerScope::AnswerTag, false).reward, 1);
    // An unclosed <answer> or unbalanced \boxed gives nothing.
    assert_eq!(extract_answer("<answer>\\boxed{5}", AnswerScope::AnswerTag), None);
    assert_eq!(extract_answer("<answer>\\boxed{5</answer>", AnswerScope::AnswerTag), None);
    // A truncated response scores 0 even with the right answer.
    assert_eq!(verify(&wrap("42"), "42", AnswerScope::AnswerTag, true).reward, 0);
    // Empty answers never match.
    assert!(!answers_equal("", ""));
}

/// The agreement corpus built from MATH-500's gold answers by `scripts/verifier_corpus.py`
/// (equivalent rewrites and near misses, labelled by construction): at least 98% of the
/// rewrites accepted and no near miss accepted. Disagreements are printed.
#[test]
fn agreement_corpus_from_math500_golds() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/verifier_corpus.jsonl");
    let text = std::fs::read_to_string(&path).expect("the committed corpus");
    let (mut eq, mut eq_ok, mut ne, mut ne_accepted) = (0, 0, 0, 0);
    for line in text.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let (gold, cand, equal) = (p["gold"].as_str().unwrap(), p["candidate"].as_str().unwrap(), p["equal"].as_bool().unwrap());
        let got = answers_equal(cand, gold);
        if got != equal {
            eprintln!("{}: gold {gold:?} candidate {cand:?}: labelled {equal}, verifier {got}", p["rule"]);
        }
        if equal {
            eq += 1;
            eq_ok += usize::from(got);
        } else {
            ne += 1;
            ne_accepted += usize::from(got);
        }
    }
    eprintln!("equivalent rewrites accepted {eq_ok}/{eq}, near misses accepted {ne_accepted}/{ne}");
    assert!(eq > 1000 && ne > 1000, "corpus of {eq} + {ne} pairs");
    assert!(eq_ok * 100 >= eq * 98, "{eq_ok}/{eq} equivalent rewrites accepted");
    assert_eq!(ne_accepted, 0, "false positives");
}
