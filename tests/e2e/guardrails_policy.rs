//! Every policy shipped under guardrails/ compiles, passes `check` and passes its own tests.

use std::path::Path;
use std::sync::Arc;

use sluice::guardrails::{tools, Policy};

#[test]
fn shipped_policies_compile_and_pass_their_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("guardrails");
    let policy = Arc::new(Policy::load(&dir).unwrap_or_else(|e| panic!("{e}")));
    assert!(policy.rules.len() >= 10);
    let failures = tools::run_tests(&policy);
    let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "\n{}", text.join("\n"));
    let report = tools::check(&dir);
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    for r in &policy.rules {
        assert!(!r.tests.is_empty(), "rule `{}` has no tests", r.id);
    }
}
