//! The chat format: ChatML with the Hermes tools system prompt of rStar2-Agent (reference §1),
//! and the parsing of `<tool_call>` blocks out of a model turn.

use serde::{Deserialize, Serialize};

/// The tool's name in the released RL config.
pub const TOOL_NAME: &str = "python_code_with_standard_io";

/// Names accepted for the same tool (the paper's spelling too).
const TOOL_ALIASES: [&str; 2] = [TOOL_NAME, "execute_python_code_with_standard_io"];

const SYSTEM_INTRO: &str = "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. The reasoning process is enclosed within <reason> </reason> and answer is enclosed within <answer> </answer> tags, respectively, i.e., <reason> reasoning process here </reason> <answer> answer here </answer>.";

const TOOL_SCHEMA: &str = r#"{"type": "function", "function": {"name": "python_code_with_standard_io", "description": "Execute Python code with standard input and capture standard output. This function takes a Python code string and an input string, provides the input string through standard input (stdin) to the code, and captures and returns any output produced through standard output (stdout). If the executed code raises an exception, the error message will be captured and returned instead.", "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "The Python code to execute."}, "input": {"type": "string", "description": "The input string to provide to the code through standard input."}}, "required": ["code", "input"]}}}"#;

/// The text around prompts, tool responses and turns. Every field is plain text; special
/// tokens are written out (`<|im_start|>`) and mapped to their ids by the tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatFormat {
    /// The whole system turn, from `<|im_start|>system\n` to its `<|im_end|>\n`; empty for none.
    pub system: String,
    /// The user turn up to the question.
    pub user_prefix: String,
    /// The user turn after the question.
    pub user_suffix: String,
    /// What starts every assistant turn (the forced `<reason>`).
    pub generation_prompt: String,
    /// The token that ends a model turn.
    pub end_of_turn: String,
    /// Most tool calls executed per turn (the rest are ignored, as in the release).
    pub max_calls_per_turn: usize,
    /// Model-facing tool output is cut to this many characters, head and tail kept (verl: 256).
    pub max_tool_response_chars: usize,
    /// Append `execution time: 0.01s` to tool responses, as the release does. Off makes
    /// responses (and so whole runs) reproducible.
    pub show_execution_time: bool,
    /// The system turn used without the tool (`eval --no-tool`); none: the system turn with its
    /// `# Tools` section removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_without_tool: Option<String>,
}

impl Default for ChatFormat {
    fn default() -> Self {
        ChatFormat::rstar2()
    }
}

impl ChatFormat {
    /// The released template, byte for byte.
    pub fn rstar2() -> Self {
        let system = format!(
            "<|im_start|>system\n{SYSTEM_INTRO}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{TOOL_SCHEMA}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n"
        );
        ChatFormat {
            system,
            user_prefix: "<|im_start|>user\nYou must put your answer inside <answer> </answer> tags, i.e., <answer> answer here </answer>. And your final answer will be extracted automatically by the \\boxed{} tag.\nThis is the problem:\n".into(),
            user_suffix: "<|im_end|>\n".into(),
            generation_prompt: "<|im_start|>assistant\n<reason>".into(),
            end_of_turn: "<|im_end|>".into(),
            max_calls_per_turn: 1,
            max_tool_response_chars: 256,
            show_execution_time: true,
            system_without_tool: None,
        }
    }

    /// The same format without the tool, to measure what the tool is worth: the system turn
    /// `system_without_tool`, else the system turn with its tool section (from `# Tools` to its
    /// end) removed; no call executed.
    pub fn without_tool(&self) -> ChatFormat {
        let system = match (&self.system_without_tool, self.system.find("\n\n# Tools")) {
            (Some(s), _) => s.clone(),
            (None, Some(i)) => format!("{}{}\n", &self.system[..i], self.end_of_turn),
            (None, None) => self.system.clone(),
        };
        ChatFormat { system, max_calls_per_turn: 0, ..self.clone() }
    }

    /// The prompt for one question, ending with the generation prompt.
    pub fn prompt(&self, question: &str) -> String {
        format!("{}{}{}{}{}", self.system, self.user_prefix, question, self.user_suffix, self.generation_prompt)
    }

    /// The text appended after a turn with tool calls: one user turn holding every response,
    /// then the next generation prompt. No newline after the model's `<|im_end|>`, as in the
    /// release's token stream.
    pub fn tool_responses(&self, responses: &[String]) -> String {
        let mut text = String::from("<|im_start|>user");
        for r in responses {
            text.push_str("\n<tool_response>\n");
            text.push_str(r);
            text.push_str("\n</tool_response>");
        }
        text.push_str(&self.user_suffix);
        text.push_str(&self.generation_prompt);
        text
    }

    /// The model-facing text of one executed call, in the release's wording, truncated.
    pub fn tool_result_text(&self, result: &rstar2_sandbox::ToolResult) -> String {
        use rstar2_sandbox::Status;
        let mut text = match result.status {
            Status::Ok => "Tool call success".to_string(),
            status => format!("Tool call failure\nreason: {}", failure_reason(status)),
        };
        if !result.stdout.is_empty() {
            text.push_str("\nstdout: ");
            text.push_str(&result.stdout);
        }
        if !result.stderr.is_empty() {
            text.push_str("\nstderr: ");
            text.push_str(&result.stderr);
        }
        if self.show_execution_time {
            text.push_str(&format!("\nexecution time: {:.2}s", result.elapsed_us as f64 / 1e6));
        }
        truncate_middle(&text, self.max_tool_response_chars)
    }
}

fn failure_reason(status: rstar2_sandbox::Status) -> &'static str {
    use rstar2_sandbox::Status;
    match status {
        Status::Ok => "",
        Status::Error => "execution error",
        Status::Timeout => "timeout",
        Status::OutputLimit => "output limit exceeded",
        Status::MemoryLimit => "memory limit exceeded",
        Status::Crashed => "interpreter crashed",
        Status::InvalidInput => "invalid input",
    }
}

/// verl's middle truncation: `text[:n/2] + "...(truncated)..." + text[-n/2:]`, in characters.
pub fn truncate_middle(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_string();
    }
    let half = max_chars / 2;
    let head: String = text.chars().take(half).collect();
    let tail: String = text.chars().skip(total - half).collect();
    format!("{head}...(truncated)...{tail}")
}

/// One `<tool_call>` block of a turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedCall {
    /// A well-formed call of the Python tool.
    Python {
        /// Source code.
        code: String,
        /// Standard input.
        input: String,
    },
    /// A block that cannot be executed; the message is shown to the model as its response.
    Invalid(String),
}

/// The `<tool_call>...</tool_call>` blocks of `text` (the release's non-greedy DOTALL regex),
/// each parsed; at most `max_calls` are returned. A turn with none returns an empty vector.
pub fn parse_tool_calls(text: &str, max_calls: usize) -> Vec<ParsedCall> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut calls = Vec::new();
    let mut rest = text;
    while calls.len() < max_calls {
        let Some(start) = rest.find(OPEN) else { break };
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        calls.push(parse_one(&after[..end]));
        rest = &after[end + CLOSE.len()..];
    }
    calls
}

fn parse_one(body: &str) -> ParsedCall {
    let value: serde_json::Value = match serde_json::from_str(body.trim()) {
        Ok(v) => v,
        Err(e) => return ParsedCall::Invalid(format!("Failed to decode tool call: {e}")),
    };
    let (Some(name), Some(arguments)) = (value.get("name"), value.get("arguments")) else {
        return ParsedCall::Invalid("Failed to decode tool call: the object needs \"name\" and \"arguments\"".into());
    };
    let Some(name) = name.as_str() else {
        return ParsedCall::Invalid("Failed to decode tool call: \"name\" must be a string".into());
    };
    if !TOOL_ALIASES.contains(&name) {
        return ParsedCall::Invalid(format!("Unknown tool: {name}. The only tool is {TOOL_NAME}."));
    }
    // Some models send the arguments as a JSON string; accept that like verl does.
    let arguments = match arguments {
        serde_json::Value::String(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(v) => v,
            Err(e) => return ParsedCall::Invalid(format!("Failed to decode tool call arguments: {e}")),
        },
        other => other.clone(),
    };
    let Some(code) = arguments.get("code").and_then(|c| c.as_str()) else {
        return ParsedCall::Invalid(format!("Missing argument \"code\" (a string) for {TOOL_NAME}"));
    };
    let input = match arguments.get("input") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return ParsedCall::Invalid("Argument \"input\" must be a string".into()),
    };
    ParsedCall::Python { code: code.to_string(), input }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_matches_the_released_template() {
        let f = ChatFormat::rstar2();
        let p = f.prompt("What is 2+2?");
        assert!(p.starts_with("<|im_start|>system\nA conversation between User and Assistant."));
        assert!(p.contains("<tools>\n{\"type\": \"function\""));
        assert!(p.contains("</tool_call><|im_end|>\n<|im_start|>user\nYou must put your answer inside"));
        assert!(p.ends_with("This is the problem:\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<reason>"));
        let schema: serde_json::Value = serde_json::from_str(TOOL_SCHEMA).unwrap();
        assert_eq!(schema["function"]["parameters"]["required"], serde_json::json!(["code", "input"]));
    }

    #[test]
    fn without_the_tool_the_prompt_has_no_tool_section_and_no_call_runs() {
        let chat = ChatFormat::rstar2();
        let plain = chat.without_tool();
        assert!(chat.system.contains("# Tools") && !plain.system.contains("# Tools") && !plain.system.contains("<tools>"));
        assert!(plain.system.starts_with("<|im_start|>system\n") && plain.system.ends_with("<|im_end|>\n"));
        assert_eq!((plain.max_calls_per_turn, &plain.user_prefix), (0, &chat.user_prefix));
        let custom = ChatFormat { system: "S with tool".into(), system_without_tool: Some("S".into()), ..ChatFormat::rstar2() };
        assert_eq!(custom.without_tool().system, "S");
        assert!(parse_tool_calls("<tool_call>{\"name\": \"python_code_with_standard_io\", \"arguments\": {\"code\": \"print(1)\"}}</tool_call>", plain.max_calls_per_turn).is_empty());
    }

    #[test]
    fn tool_response_segment() {
        let f = ChatFormat::rstar2();
        assert_eq!(
            f.tool_responses(&["a".into(), "b".into()]),
            "<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response><|im_end|>\n<|im_start|>assistant\n<reason>"
        );
    }

    #[test]
    fn parses_calls_and_errors() {
        let t = r#"x <tool_call>
{"name": "python_code_with_standard_io", "arguments": {"code": "print(1)", "input": ""}}
</tool_call> <tool_call>{"name": "python_code_with_standard_io", "arguments": {"code": "print(2)"}}</tool_call>"#;
        assert_eq!(parse_tool_calls(t, 5), vec![ParsedCall::Python { code: "print(1)".into(), input: "".into() }, ParsedCall::Python { code: "print(2)".into(), input: "".into() }]);
        assert_eq!(parse_tool_calls(t, 1).len(), 1);
        assert!(parse_tool_calls("no call", 1).is_empty());
        assert!(parse_tool_calls("<tool_call>{\"name\": 1", 1).is_empty(), "unclosed block is not a call");
        let bad = parse_tool_calls("<tool_call>{\"name\": \"x\", </tool_call>", 1);
        assert!(matches!(&bad[0], ParsedCall::Invalid(m) if m.starts_with("Failed to decode tool call:")));
        let unknown = parse_tool_calls(r#"<tool_call>{"name": "shell", "arguments": {"code": "ls"}}</tool_call>"#, 1);
        assert!(matches!(&unknown[0], ParsedCall::Invalid(m) if m.starts_with("Unknown tool: shell")));
        let missing = parse_tool_calls(r#"<tool_call>{"name": "python_code_with_standard_io", "arguments": {}}</tool_call>"#, 1);
        assert!(matches!(&missing[0], ParsedCall::Invalid(m) if m.contains("\"code\"")));
        let stringly = parse_tool_calls(r#"<tool_call>{"name": "python_code_with_standard_io", "arguments": "{\"code\": \"print(3)\"}"}</tool_call>"#, 1);
        assert_eq!(stringly[0], ParsedCall::Python { code: "print(3)".into(), input: "".into() });
    }

    #[test]
    fn truncation_keeps_head_and_tail() {
        let t: String = ('a'..='z').collect();
        assert_eq!(truncate_middle(&t, 10), "abcde...(truncated)...vwxyz");
        assert_eq!(truncate_middle("short", 10), "short");
    }

    #[test]
    fn tool_result_wording() {
        use rstar2_sandbox::{Status, ToolResult};
        let mut f = ChatFormat::rstar2();
        let ok = ToolResult { status: Status::Ok, stdout: "4\n".into(), stderr: String::new(), elapsed_us: 12_000 };
        assert_eq!(f.tool_result_text(&ok), "Tool call success\nstdout: 4\n\nexecution time: 0.01s");
        f.show_execution_time = false;
        let err = ToolResult { status: Status::Error, stdout: String::new(), stderr: "NameError: x".into(), elapsed_us: 5 };
        assert_eq!(f.tool_result_text(&err), "Tool call failure\nreason: execution error\nstderr: NameError: x");
    }
}
