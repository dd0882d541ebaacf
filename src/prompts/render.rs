//! Rendering a prompt's messages, and running its test cases.
//!
//! The environment is built for text that a model reads, not HTML: auto-escape is off (an `&` in
//! a customer's name stays an `&`), undefined is strict (a typo in a template is an error, never
//! an empty string in a prompt), and there is no loader, so a template cannot include a file. The
//! rendered text is bounded, so neither a loop in a template nor a long variable can build a
//! prompt of any size; a template's own cost is the operator's, and its tests run at every load.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::file::{Expect, Prompt};
use super::schema::{self, VarError};
use super::PromptSet;

/// The most text one prompt may render, all messages together.
pub const MAX_RENDERED_BYTES: usize = 256 * 1024;

/// One shared environment: it holds no templates (each is compiled from its source at render),
/// only the settings and the built-in filters.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env
});

/// One rendered message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rendered {
    pub role: String,
    pub content: String,
}

/// Why a prompt did not render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The client's variables do not fit the schema.
    #[error("{0}")]
    Variables(#[from] VarError),
    /// A template failed (a strict undefined, a filter given the wrong type).
    #[error("Prompt `{prompt}` message {index} does not render: {detail}")]
    Template {
        prompt: String,
        index: usize,
        detail: String,
    },
    #[error("Prompt `{prompt}` renders more than {MAX_RENDERED_BYTES} bytes")]
    TooLarge { prompt: String },
}

/// The variable names a template reads from its context: its undeclared variables, less the
/// environment's own globals (`range`, `dict`, …).
pub fn template_names(source: &str) -> Result<HashSet<String>, minijinja::Error> {
    let mut names = ENV.template_from_str(source)?.undeclared_variables(false);
    for (global, _) in ENV.globals() {
        names.remove(global);
    }
    Ok(names)
}

/// Checks `variables` against the prompt's schema and renders every message.
pub fn render(
    prompt: &Prompt,
    variables: &Map<String, Value>,
) -> Result<Vec<Rendered>, RenderError> {
    let ctx = schema::check(&prompt.id, &prompt.variables, variables)?;
    let ctx = minijinja::Value::from_serialize(&ctx);
    let mut total = 0usize;
    let mut out = Vec::with_capacity(prompt.messages.len());
    for (index, m) in prompt.messages.iter().enumerate() {
        let content = ENV
            .render_str(&m.content, &ctx)
            .map_err(|e| RenderError::Template {
                prompt: prompt.id.clone(),
                index,
                detail: e.to_string(),
            })?;
        total += content.len();
        if total > MAX_RENDERED_BYTES {
            return Err(RenderError::TooLarge {
                prompt: prompt.id.clone(),
            });
        }
        out.push(Rendered {
            role: m.role.clone(),
            content,
        });
    }
    Ok(out)
}

/// The text a test case's `expect` is compared with: one `role: content` line per message
/// (content may span lines), joined by newlines.
pub fn transcript(messages: &[Rendered]) -> String {
    messages
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A failing test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    pub file: PathBuf,
    pub prompt: String,
    pub case: String,
    pub problem: Problem,
}

/// What went wrong in a test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Rendered, but not to the text expected.
    Differs { expected: String, rendered: String },
    /// Expected text, got an error.
    Failed { error: String },
    /// Expected an error containing `expected`; rendered instead.
    Rendered { expected: String },
    /// Expected an error containing `expected`; got another one.
    OtherError { expected: String, error: String },
}

/// Runs every case of every prompt in the set.
pub fn run_tests(set: &PromptSet) -> Vec<TestFailure> {
    set.prompts.values().flat_map(|p| run_prompt(p)).collect()
}

/// Runs every case of one prompt.
pub fn run_prompt(p: &Prompt) -> Vec<TestFailure> {
    let mut failures = Vec::new();
    for case in &p.tests {
        let result = render(p, &case.variables).map(|m| transcript(&m));
        let problem = match (&case.expect, result) {
            (Expect::Text(want), Ok(got)) => {
                // A TOML multi-line string ends with the newline before its closing quotes.
                let want = want.strip_suffix('\n').unwrap_or(want);
                (want != got).then(|| Problem::Differs {
                    expected: want.to_owned(),
                    rendered: got,
                })
            }
            (Expect::Text(_), Err(e)) => Some(Problem::Failed {
                error: e.to_string(),
            }),
            (Expect::Error(want), Ok(_)) => Some(Problem::Rendered {
                expected: want.clone(),
            }),
            (Expect::Error(want), Err(e)) => {
                let e = e.to_string();
                (!e.contains(want.as_str())).then(|| Problem::OtherError {
                    expected: want.clone(),
                    error: e,
                })
            }
        };
        if let Some(problem) = problem {
            failures.push(TestFailure {
                file: p.file.clone(),
                prompt: p.id.clone(),
                case: case.name.clone(),
                problem,
            });
        }
    }
    failures
}

// === impl TestFailure ===

impl TestFailure {
    /// Names the case without its texts, for a log line or an audit record: test variables may
    /// hold whatever the author put there, and the diff belongs in `sluice prompts test`.
    pub fn describe(&self) -> String {
        let what = match &self.problem {
            Problem::Differs { .. } => "renders other text than `expect`",
            Problem::Failed { .. } => "does not render",
            Problem::Rendered { .. } => "renders, but `expect_error` expects an error",
            Problem::OtherError { .. } => "fails with another error than `expect_error`",
        };
        format!(
            "{}: prompt `{}` case `{}` {what}",
            self.file.display(),
            self.prompt,
            self.case
        )
    }
}

impl fmt::Display for TestFailure {
    /// The CLI's report: the case and a line diff of expected against rendered.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "FAIL {}", self.describe())?;
        match &self.problem {
            Problem::Differs { expected, rendered } => {
                writeln!(f, "  --- expected\n  +++ rendered")?;
                diff(f, expected, rendered)
            }
            Problem::Failed { error } => writeln!(f, "  error: {error}"),
            Problem::Rendered { expected } => {
                writeln!(f, "  expected an error containing {expected:?}")
            }
            Problem::OtherError { expected, error } => {
                writeln!(
                    f,
                    "  expected an error containing {expected:?}\n  got: {error}"
                )
            }
        }
    }
}

/// A line diff by longest common subsequence: `-` lines only expected, `+` lines only rendered.
fn diff(f: &mut fmt::Formatter<'_>, a: &str, b: &str) -> fmt::Result {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('\n').collect(), b.split('\n').collect());
    // Test texts are a few lines; a quadratic table is fine, and bounded so a huge one is not.
    if a.len() * b.len() > 1_000_000 {
        return writeln!(
            f,
            "  (texts too long to diff: {} and {} lines)",
            a.len(),
            b.len()
        );
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            writeln!(f, "    {}", a[i])?;
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            writeln!(f, "  + {}", b[j])?;
            j += 1;
        } else {
            writeln!(f, "  - {}", a[i])?;
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn prompt(text: &str) -> Prompt {
        Prompt::parse(Path::new("p.toml"), text.as_bytes()).unwrap()
    }

    fn vars(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn renders_without_escaping_and_with_optional_variables_absent() {
        let p = prompt(super::super::file::tests::GOOD);
        let m = render(&p, &vars(serde_json::json!({"customer": "A&B <x>"}))).unwrap();
        assert_eq!(m[0].content, "You help A&B <x>.");
        assert_eq!(m[1].content, "Hello");
        let m = render(
            &p,
            &vars(serde_json::json!({"customer": "A", "tone": "friend"})),
        )
        .unwrap();
        assert_eq!(transcript(&m), "system: You help A.\nuser: Hello, friend");
    }

    #[test]
    fn undefined_is_strict() {
        // An attribute of a variable is not checked at load; at render it is an error, not "".
        let p = prompt(
            &super::super::file::tests::GOOD.replace("{{ customer }}", "{{ customer.name }}"),
        );
        let e = render(&p, &vars(serde_json::json!({"customer": "Ada"}))).unwrap_err();
        assert!(matches!(e, RenderError::Template { index: 0, .. }), "{e}");
        assert!(e.to_string().contains("undefined"), "{e}");
    }

    #[test]
    fn output_is_bounded() {
        let p = prompt(&super::super::file::tests::GOOD.replace(
            "{{ customer }}",
            "{% for i in range(100000) %}{{ customer }}{% endfor %}",
        ));
        let e = render(&p, &vars(serde_json::json!({"customer": "abcdefghij"}))).unwrap_err();
        assert!(matches!(e, RenderError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn the_runner_passes_good_cases_and_names_wrong_ones_with_a_diff() {
        let good = super::super::file::tests::GOOD;
        assert!(run_prompt(&prompt(good)).is_empty());
        let wrong = good.replace("system: You help Ada.", "system: You serve Ada.");
        let failures = run_prompt(&prompt(&wrong));
        assert_eq!(failures.len(), 1);
        let f = &failures[0];
        assert_eq!((f.prompt.as_str(), f.case.as_str()), ("greet", "plain"));
        let shown = f.to_string();
        assert!(shown.contains("prompt `greet` case `plain`"), "{shown}");
        assert!(shown.contains("  - system: You serve Ada."), "{shown}");
        assert!(shown.contains("  + system: You help Ada."), "{shown}");
        assert!(shown.contains("    user: Hello"), "{shown}");
        assert!(!f.describe().contains("Ada"), "{}", f.describe());
        let wrong = good.replace("needs the variable `customer`", "something else");
        let failures = run_prompt(&prompt(&wrong));
        assert!(matches!(failures[0].problem, Problem::OtherError { .. }));
        assert_eq!(failures[0].case, "missing");
    }
}
