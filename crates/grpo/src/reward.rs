//! The reward: 1 iff the final answer equals the ground truth, else 0 (paper Eq. 3).
//!
//! The answer is the last brace-matched `\boxed{...}` (or `\fbox{...}`) inside the last
//! `<answer>...</answer>` (or anywhere, as an option), compared with the ground truth by value
//! ([`crate::math`]): exactly as rationals where both sides are rational (no floating-point
//! tolerance, so near values never match), expressions with roots, π or variables at seeded
//! points to 1e-9, and tuples, intervals, sets, matrices and equations by structure; `\pm 2021`
//! is the set {2021, -2021}, never `2021`.

use serde::{Deserialize, Serialize};

/// Where the answer is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerScope {
    /// The last `\boxed{}` inside the last `<answer>...</answer>` (the rStar2 prompt's contract).
    #[default]
    AnswerTag,
    /// The last `\boxed{}` anywhere in the response (the release's PRIME grader).
    Anywhere,
}

/// The outcome of checking one response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// 1 if correct, else 0.
    pub reward: u8,
    /// The boxed text that was compared, if one was found.
    pub extracted: Option<String>,
}

/// Scores `response` against `ground_truth`. A truncated response (cut by the length budget)
/// scores 0 whatever it contains, as in the paper.
///
/// ```
/// use rstar2_grpo::reward::{verify, AnswerScope};
/// let v = verify("<reason>...</reason><answer>So \\boxed{\\frac{6}{4}}.</answer>", "3/2", AnswerScope::AnswerTag, false);
/// assert_eq!(v.reward, 1);
/// ```
pub fn verify(response: &str, ground_truth: &str, scope: AnswerScope, truncated: bool) -> Verdict {
    let extracted = extract_answer(response, scope);
    let reward = match &extracted {
        Some(answer) if !truncated => u8::from(answers_equal(answer, ground_truth)),
        _ => 0,
    };
    Verdict { reward, extracted }
}

/// The content of the last brace-matched `\boxed{}` or `\fbox{}` in the chosen scope.
pub fn extract_answer(response: &str, scope: AnswerScope) -> Option<String> {
    let region = match scope {
        AnswerScope::Anywhere => response,
        AnswerScope::AnswerTag => {
            let open = response.rfind("<answer>")?;
            let body = &response[open + "<answer>".len()..];
            &body[..body.find("</answer>")?]
        }
    };
    last_boxed(region)
}

fn last_boxed(text: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for marker in ["\\boxed", "\\fbox"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(marker).map(|p| p + from) {
            from = pos + marker.len();
            let rest = &text[from..];
            let trimmed = rest.trim_start();
            let Some(inner) = trimmed.strip_prefix('{') else { continue };
            if let Some(content) = brace_matched(inner)
                && best.as_ref().is_none_or(|(p, _)| pos > *p)
            {
                best = Some((pos, content.to_string()));
            }
        }
    }
    best.map(|(_, s)| s)
}

/// The text up to the `}` that closes an already opened `{`.
fn brace_matched(after_open: &str) -> Option<&str> {
    let mut depth = 1usize;
    let mut escaped = false;
    for (i, c) in after_open.char_indices() {
        match c {
            '\\' => {
                escaped = !escaped;
                continue;
            }
            '{' if !escaped => depth += 1,
            '}' if !escaped => {
                depth -= 1;
                if depth == 0 {
                    return Some(&after_open[..i]);
                }
            }
            _ => {}
        }
        escaped = false;
    }
    None
}

/// Whether two answers are equal by value (see [`crate::math`]): exact rationals, expressions
/// at seeded points, structures (tuples, sets, intervals, matrices, equations) element by
/// element, text normalized. Empty answers never match.
pub fn answers_equal(answer: &str, ground_truth: &str) -> bool {
    !answer.trim().is_empty() && !ground_truth.trim().is_empty() && crate::math::equivalent(answer, ground_truth)
}
