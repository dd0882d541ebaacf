//! `type = "judge"`: a model grades the answer against a rubric.
//!
//! Some answers have no checkable form (a summary, an explanation). A judge model reads the
//! conversation, the references when the case has some, the answer and the suite's rubric, and
//! ends its reply with `SCORE: N` on a scale of 0 to `max_score`. The judge is any model the
//! gateway serves, called through the gateway like the model under test (keys, limits, routing),
//! at temperature 0. This module builds the request and reads the reply; the runner sends it.
//!
//! The score read is the last `score` label followed by a number (`SCORE: 7`, `**Score**: 7/10`,
//! `score = 7.5`), or the whole reply when it is a number. A reply with no score, or one outside
//! the scale, fails the case with the reply's start in the record, never a guess.

use serde::Deserialize;
use serde_json::{json, Value};

use super::Verdict;
use crate::eval::dataset::Case;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    pub name: Option<String>,
    /// The judging model, as the gateway names it.
    pub model: String,
    /// What a good answer does, in words.
    pub rubric: String,
    /// The top of the scale (default 10).
    pub max_score: Option<f64>,
    /// The score an answer needs to pass (default 70 % of `max_score`).
    pub pass_score: Option<f64>,
    /// The judge's reply budget (default 256).
    pub max_tokens: Option<u32>,
}

#[derive(Debug)]
pub struct Judge {
    pub model: String,
    rubric: String,
    max_score: f64,
    pass_score: f64,
    max_tokens: u32,
}

// === impl Judge ===

impl Judge {
    pub fn new(c: JudgeConfig) -> Result<Judge, String> {
        if c.model.trim().is_empty() {
            return Err("`model`: must name a model".into());
        }
        if c.rubric.trim().is_empty() {
            return Err("`rubric`: must say what a good answer does".into());
        }
        let max_score = c.max_score.unwrap_or(10.0);
        if !(max_score.is_finite() && max_score > 0.0) {
            return Err("`max_score`: must be above 0".into());
        }
        let pass_score = c.pass_score.unwrap_or(0.7 * max_score);
        if !(0.0..=max_score).contains(&pass_score) {
            return Err(format!("`pass_score`: must be between 0 and {max_score}"));
        }
        Ok(Judge {
            model: c.model,
            rubric: c.rubric,
            max_score,
            pass_score,
            max_tokens: c.max_tokens.unwrap_or(256),
        })
    }

    /// The chat request that asks the judge about `answer`.
    pub fn request(&self, case: &Case, answer: &str) -> Value {
        let max = self.max_score;
        let system = format!(
            "You grade answers of an AI assistant. Rubric: {}\n\
             Reason briefly, then end your reply with one line `SCORE: N`, where N is a number \
             from 0 (fails the rubric) to {max} (meets it fully).",
            self.rubric
        );
        let mut user = String::from("Conversation:\n");
        for m in &case.messages {
            user.push_str(&format!("[{}] {}\n", m.role.as_str(), m.text()));
        }
        if !case.references.is_empty() {
            user.push_str("\nReference answer(s):\n");
            for r in &case.references {
                user.push_str(&format!("- {r}\n"));
            }
        }
        user.push_str(&format!("\nAnswer to grade:\n{answer}\n"));
        json!({
            "model": self.model,
            "stream": false,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        })
    }

    /// The verdict in a judge's reply.
    pub fn verdict(&self, reply: &str) -> Verdict {
        match parse_score(reply) {
            Some(s) if (0.0..=self.max_score).contains(&s) => Verdict {
                score: s / self.max_score,
                passed: s >= self.pass_score,
                detail: Some(format!("judge: {s}/{}", self.max_score)),
            },
            Some(s) => Verdict::fail(format!("judge score {s} is outside 0..={}", self.max_score)),
            None => Verdict::fail(format!("judge reply has no score: {:?}", start(reply))),
        }
    }
}

/// The last `score` label's number, or the reply itself when it is a number.
pub fn parse_score(reply: &str) -> Option<f64> {
    let lower = reply.to_lowercase();
    let from_label = lower.rmatch_indices("score").find_map(|(i, label)| {
        let rest = lower[i + label.len()..].trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, ':' | '=' | '*' | '_' | '#')
        });
        leading_number(rest)
    });
    from_label.or_else(|| reply.trim().trim_end_matches('.').parse().ok())
}

/// A number at the very start of `text` (`7`, `7.5`; `7/10` reads 7).
fn leading_number(text: &str) -> Option<f64> {
    let end = text
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map_or(text.len(), |(i, _)| i);
    text[..end].trim_end_matches('.').parse().ok()
}

fn start(reply: &str) -> String {
    reply.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::dataset::Expect;
    use crate::eval::scorers::test_support::*;

    #[test]
    fn scores_are_read_from_the_last_label() {
        assert_eq!(parse_score("Good.\nSCORE: 8"), Some(8.0));
        assert_eq!(parse_score("**Score**: 7/10"), Some(7.0));
        assert_eq!(parse_score("score = 7.5."), Some(7.5));
        assert_eq!(
            parse_score("A score of 3 would be harsh. SCORE: 9"),
            Some(9.0)
        );
        assert_eq!(parse_score("9"), Some(9.0));
        assert_eq!(parse_score("No idea."), None);
        assert_eq!(parse_score(""), None);
        assert_eq!(parse_score("Score: high"), None);
        assert_eq!(parse_score("Ünïcode — SCORE: 4"), Some(4.0));
    }

    #[test]
    fn verdicts_on_the_scale() {
        let c: JudgeConfig = toml::from_str("model = \"j\"\nrubric = \"r\"").unwrap();
        let j = Judge::new(c).unwrap();
        let v = j.verdict("SCORE: 8");
        assert!(v.passed);
        assert!((v.score - 0.8).abs() < 1e-9);
        assert!(!j.verdict("SCORE: 6").passed);
        assert!(!j.verdict("SCORE: 11").passed);
        assert!(j.verdict("dunno").detail.unwrap().contains("no score"));
        let s = scorer(
            "type = \"judge\"\nmodel = \"j\"\nrubric = \"r\"\nmax_score = 5\npass_score = 6",
        );
        assert!(s.unwrap_err().contains("pass_score"));
        assert!(scorer("type = \"judge\"\nmodel = \"j\"")
            .unwrap_err()
            .contains("rubric"));
    }

    #[test]
    fn the_request_carries_rubric_conversation_references_and_answer() {
        let c: JudgeConfig = toml::from_str("model = \"j\"\nrubric = \"Names Paris.\"").unwrap();
        let j = Judge::new(c).unwrap();
        let mut case = case(&["Paris"], Expect::default());
        case.messages =
            serde_json::from_str(r#"[{"role":"user","content":"Capital of France?"}]"#).unwrap();
        let body = j.request(&case, "It is Paris.");
        assert_eq!(body["model"], "j");
        assert!(body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("Names Paris."));
        let user = body["messages"][1]["content"].as_str().unwrap();
        assert!(user.contains("[user] Capital of France?"), "{user}");
        assert!(
            user.contains("- Paris") && user.contains("It is Paris."),
            "{user}"
        );
    }
}
