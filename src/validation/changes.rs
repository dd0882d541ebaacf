//! What changed since a model's approval: the audit records that concern it, from `approved_at`.
//!
//! The registry says who approved a model and when; the audit log says what was done to it after:
//! weight changes, switches, canary rollbacks, promotion decisions and the config, policy and
//! prompt reloads that may have changed it. Guardrail decisions are left out: they are per
//! request, not changes to what is served.

use std::io::BufRead;
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

/// Events about the whole gateway that may have changed any model.
const GLOBAL: &[&str] = &["config_reload", "policy_reload", "prompt_reload"];

/// Parses `approved_at`: RFC 3339, or a bare date (`2026-11-02`, midnight UTC).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.len() == 10 {
        return humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")).ok();
    }
    humantime::parse_rfc3339_weak(s).ok()
}

/// The audit records of the file at `path` about `model`, written at or after `since` (all of
/// them without it), in file order. A missing file has none; unparsable lines are skipped
/// (`sluice audit verify` is what names them).
pub fn since(path: &Path, model: &str, since: Option<SystemTime>) -> std::io::Result<Vec<Value>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let event = v["event"].as_str().unwrap_or_default();
        let concerns = if event == "guardrail" {
            false
        } else {
            v["model"].as_str() == Some(model) || GLOBAL.contains(&event)
        };
        if !concerns {
            continue;
        }
        let after = match (since, v["time"].as_str().and_then(parse_time)) {
            (None, _) => true,
            (Some(s), Some(t)) => t >= s,
            (Some(_), None) => false,
        };
        if after {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_about_the_model_from_approval_on() {
        let dir = std::env::temp_dir().join(format!("sluice-changes-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let lines = [
            r#"{"time":"2026-01-01T10:00:00.000Z","event":"weight_set","model":"m"}"#,
            r#"{"time":"2026-01-03T10:00:00.000Z","event":"weight_set","model":"m","to":5}"#,
            r#"{"time":"2026-01-03T11:00:00.000Z","event":"weight_set","model":"other"}"#,
            r#"{"time":"2026-01-03T12:00:00.000Z","event":"guardrail","model":"m"}"#,
            r#"{"time":"2026-01-04T12:00:00.000Z","event":"config_reload","result":"ok"}"#,
            r#"{"time":"2026-01-04T13:00:00.000Z","event":"prompt_reload","result":"ok"}"#,
            "not json",
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let got = since(&path, "m", parse_time("2026-01-02")).unwrap();
        let events: Vec<&str> = got.iter().map(|v| v["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["weight_set", "config_reload", "prompt_reload"]);
        assert_eq!(got[0]["to"], 5);
        assert_eq!(since(&path, "m", None).unwrap().len(), 4);
        assert!(since(&dir.join("none"), "m", None).unwrap().is_empty());
        assert!(parse_time("2026-01-02T03:04:05Z").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
