//! One model's four answers: where it serves, what it was validated on, who owns and approved it,
//! and what changed since the approval. `GET /admin/models/{model}` gives them with the live
//! routing state; `sluice models show` with the config's, read offline.

use serde_json::{json, Value};

use super::evidence::Stored;
use super::gate::{decide, Verdict};
use crate::config::{Config, ModelConfig};

/// The routing state as the config gives it, for when no gateway is asked: configured weights,
/// every target on, no breaker state known.
pub fn configured_snapshot(model: &ModelConfig) -> Value {
    let targets: Vec<Value> = model
        .targets
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "backends": t.replicas,
                "upstream_model": t.upstream_model,
                "version": t.version.clone().or_else(|| model.registry.version.clone()),
                "configured_weight": t.weight,
                "weight": t.weight,
                "enabled": true,
                "breaker": Value::Null,
                "canary": t.canary.is_some(),
            })
        })
        .collect();
    json!({
        "model": model.name,
        "live": false,
        "enabled": true,
        "fallbacks": model.fallbacks,
        "targets": targets,
    })
}

/// The four answers for `model`, with `serving` the routing snapshot (live or configured).
/// Blocking: reads the records directory, the suite and the audit file.
pub fn view(config: &Config, model: &ModelConfig, serving: Value) -> Value {
    let validation = model.validation.as_ref().map(|v| {
        let records = Stored::read_dir(&config.validation_records);
        let targets: Vec<Value> = model
            .targets
            .iter()
            .filter_map(|t| {
                let weight = serving["targets"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|x| x["name"] == t.name.as_str()))
                    .and_then(|x| x["weight"].as_u64())
                    .map_or(t.weight, |w| w as u32);
                let d = decide(
                    config,
                    model,
                    t,
                    weight,
                    &records,
                    t.validation_override.as_deref(),
                )?;
                let mut out = serde_json::to_value(&d).unwrap_or(Value::Null);
                if let (Verdict::Admitted { evidence }, Some(obj)) =
                    (&d.verdict, out.as_object_mut())
                {
                    obj.insert(
                        "run_at".into(),
                        super::gate::time(evidence.started_at).into(),
                    );
                }
                Some(out)
            })
            .collect();
        json!({
            "suite": v.suite.display().to_string(),
            "min_score": v.min_score,
            "records": config.validation_records.display().to_string(),
            "targets": targets,
        })
    });
    let r = &model.registry;
    let since = r
        .approved_at
        .as_deref()
        .and_then(super::changes::parse_time);
    let changes = match &config.audit_path {
        None => json!({"audit": Value::Null, "records": []}),
        Some(p) => match super::changes::since(p, &model.name, since) {
            Ok(records) => json!({"audit": p.display().to_string(), "records": records}),
            Err(e) => json!({
                "audit": p.display().to_string(),
                "error": format!("cannot read: {e}"),
                "records": [],
            }),
        },
    };
    json!({
        "model": model.name,
        "serving": serving,
        "validation": validation,
        "registry": {
            "owner": r.owner,
            "approved_by": r.approved_by,
            "approved_at": r.approved_at,
            "version": r.version,
            "description": r.description,
        },
        "changes_since_approval": changes,
    })
}

/// The view as text, for a terminal.
pub fn render(v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = format!("model {}\n\nserving:\n", s(&v["model"]));
    for t in v["serving"]["targets"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<16} weight {:>6}  version {:<12} enabled {:<5} breaker {}  canary {}\n",
            s(&t["name"]),
            s(&t["weight"]),
            s(&t["version"]),
            s(&t["enabled"]),
            s(&t["breaker"]),
            s(&t["canary"]),
        ));
    }
    out.push_str("\nvalidated on:\n");
    match &v["validation"] {
        Value::Null => out.push_str("  no `validation` declared: targets are not gated\n"),
        val => {
            out.push_str(&format!(
                "  suite {}, min_score {}\n",
                s(&val["suite"]),
                s(&val["min_score"])
            ));
            for t in val["targets"].as_array().into_iter().flatten() {
                let what = match t["verdict"].as_str() {
                    Some("admitted") => format!(
                        "record {} pass rate {} dataset {} run at {} by {}",
                        s(&t["evidence"]["record"]),
                        s(&t["evidence"]["pass_rate"]),
                        s(&t["evidence"]["dataset_sha256"]),
                        s(&t["run_at"]),
                        s(&t["evidence"]["run_by"]),
                    ),
                    Some("overridden") => format!("OVERRIDE ({})", s(&t["reason"])),
                    _ => format!("NO EVIDENCE: {}", s(&t["missing"])),
                };
                out.push_str(&format!("  {:<16} {what}\n", s(&t["target"])));
            }
        }
    }
    let r = &v["registry"];
    out.push_str(&format!(
        "\nowner {}, approved by {} at {}, version {}\n",
        s(&r["owner"]),
        s(&r["approved_by"]),
        s(&r["approved_at"]),
        s(&r["version"])
    ));
    let c = &v["changes_since_approval"];
    out.push_str(&format!("\nchanges since approval ({}):\n", s(&c["audit"])));
    for rec in c["records"].as_array().into_iter().flatten() {
        let mut rest = rec.as_object().cloned().unwrap_or_default();
        for k in ["time", "event", "seq", "prev", "model"] {
            rest.remove(k);
        }
        out.push_str(&format!(
            "  {} {} {}\n",
            s(&rec["time"]),
            s(&rec["event"]),
            Value::Object(rest)
        ));
    }
    out
}
