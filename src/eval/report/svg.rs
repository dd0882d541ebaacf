//! Inline SVG charts for the HTML report: bars of mean scores, the sorted latency of every case,
//! a histogram of answer lengths.
//!
//! The page must open anywhere (an attachment, a CI artefact, a laptop offline), so the charts
//! are drawn here as SVG markup inside the page rather than by a script or a chart library.
//! Sizes are in the SVG's own units with a `viewBox`, so the charts scale with the page. Every
//! label comes from the record and is escaped.

use std::fmt::Write;

use super::escape;

/// Chart width in SVG units.
const WIDTH: f64 = 640.0;
const INK: &str = "#1f2937";
const MUTED: &str = "#6b7280";
const GRID: &str = "#e5e7eb";
const ACCENT: &str = "#2563eb";
const PASS: &str = "#15803d";
const FAIL: &str = "#b91c1c";

fn open(height: f64, label: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{}" font-family="system-ui, -apple-system, 'Segoe UI', sans-serif" font-size="12">"#,
        escape(label)
    )
}

/// Horizontal bars of scores in `0..1`, one row per `(name, value)`.
pub fn score_bars(items: &[(String, f64)]) -> String {
    let row = 30.0;
    let (left, right) = (170.0, 56.0);
    let span = WIDTH - left - right;
    let height = row * items.len().max(1) as f64 + 24.0;
    let mut s = open(height, "Mean score of each scorer");
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let x = left + span * tick;
        let _ = write!(
            s,
            r#"<line x1="{x:.1}" y1="4" x2="{x:.1}" y2="{:.1}" stroke="{GRID}"/><text x="{x:.1}" y="{:.1}" fill="{MUTED}" text-anchor="middle">{tick}</text>"#,
            height - 20.0,
            height - 6.0
        );
    }
    for (i, (name, value)) in items.iter().enumerate() {
        let y = 8.0 + row * i as f64;
        let v = if value.is_finite() {
            value.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let colour = if v >= 0.999 { PASS } else { ACCENT };
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{INK}" text-anchor="end">{}</text><rect x="{left}" y="{y:.1}" width="{:.1}" height="18" rx="3" fill="{colour}"><title>{}: {value:.3}</title></rect><text x="{:.1}" y="{:.1}" fill="{INK}">{value:.3}</text>"#,
            left - 8.0,
            y + 13.0,
            escape(&clip(name, 24)),
            (span * v).max(1.0),
            escape(name),
            left + span * v + 6.0,
            y + 13.0,
        );
    }
    s.push_str("</svg>");
    s
}

/// Every answered case's latency, sorted, one bar each (green passed, red failed), with the
/// record's p50 and p95 as dashed lines.
pub fn latency_curve(cases: &[(String, f64, bool)], p50: Option<f64>, p95: Option<f64>) -> String {
    let height = 220.0;
    let (left, bottom, top) = (56.0, 24.0, 24.0);
    let span_x = WIDTH - left - 12.0;
    let span_y = height - bottom - top;
    let mut sorted: Vec<&(String, f64, bool)> = cases.iter().filter(|c| c.1.is_finite()).collect();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let max = sorted
        .last()
        .map_or(1.0, |c| c.1)
        .max(p95.unwrap_or(0.0))
        .max(1e-9)
        // Headroom, so the slowest bar does not touch the frame.
        * 1.05;
    let y_of = |ms: f64| top + span_y * (1.0 - ms / max);
    let mut s = open(height, "Latency of each case, sorted, with p50 and p95");
    for tick in [0.0, 0.5, 1.0] {
        let y = y_of(max * tick);
        let _ = write!(
            s,
            r#"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{GRID}"/><text x="{:.1}" y="{:.1}" fill="{MUTED}" text-anchor="end">{}</text>"#,
            WIDTH - 12.0,
            left - 6.0,
            y + 4.0,
            ms(max * tick)
        );
    }
    let n = sorted.len().max(1) as f64;
    let w = span_x / n;
    for (i, (id, latency, passed)) in sorted.iter().enumerate() {
        let y = y_of(*latency);
        let _ = write!(
            s,
            r#"<rect x="{:.2}" y="{y:.2}" width="{:.2}" height="{:.2}" fill="{}"><title>{}: {} ms</title></rect>"#,
            left + w * i as f64 + w * 0.1,
            (w * 0.8).max(0.5),
            (height - bottom - y).max(0.5),
            if *passed { PASS } else { FAIL },
            escape(id),
            ms(*latency)
        );
    }
    // p95 is labelled above its line and p50 below, so the two stay legible when they are close.
    for (name, value, dy) in [("p50", p50, 14.0), ("p95", p95, -5.0)] {
        if let Some(v) = value {
            let y = y_of(v);
            let _ = write!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{INK}" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}" fill="{INK}" text-anchor="end" stroke="#fff" stroke-width="3" paint-order="stroke">{name} {} ms</text>"##,
                WIDTH - 12.0,
                WIDTH - 14.0,
                y + dy,
                ms(v)
            );
        }
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{:.1}" fill="{MUTED}">{} cases, fastest to slowest</text></svg>"#,
        height - 6.0,
        sorted.len()
    );
    s
}

/// Vertical bars of `(label, count)`.
pub fn histogram(buckets: &[(String, usize)], label: &str) -> String {
    let height = 200.0;
    let (left, bottom, top) = (12.0, 40.0, 20.0);
    let span_y = height - bottom - top;
    let max = buckets.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let w = (WIDTH - 2.0 * left) / buckets.len().max(1) as f64;
    let mut s = open(height, label);
    let _ = write!(
        s,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{GRID}"/>"#,
        height - bottom,
        WIDTH - left,
        height - bottom
    );
    for (i, (name, count)) in buckets.iter().enumerate() {
        let h = span_y * *count as f64 / max;
        let x = left + w * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" rx="2" fill="{ACCENT}"/><text x="{:.1}" y="{:.1}" fill="{INK}" text-anchor="middle">{count}</text><text x="{:.1}" y="{:.1}" fill="{MUTED}" text-anchor="middle">{}</text>"#,
            x + w * 0.15,
            height - bottom - h,
            w * 0.7,
            x + w / 2.0,
            height - bottom - h - 5.0,
            x + w / 2.0,
            height - bottom + 16.0,
            escape(name)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" fill="{MUTED}" text-anchor="middle">{}</text></svg>"#,
        WIDTH / 2.0,
        height - 6.0,
        escape(label)
    );
    s
}

/// Milliseconds, briefly.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        s.chars().take(n - 1).chain(['…']).collect()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_escape_their_labels() {
        let bars = score_bars(&[("<b>x</b>".into(), 0.5), ("ok".into(), f64::NAN)]);
        assert!(bars.starts_with("<svg") && bars.ends_with("</svg>"));
        assert!(!bars.contains("<b>") && bars.contains("&lt;b&gt;"));
        let curve = latency_curve(
            &[("<script>".into(), 12.0, true), ("b".into(), 30.0, false)],
            Some(12.0),
            Some(30.0),
        );
        assert!(!curve.contains("<script") && curve.contains("p95 30.0 ms"));
        assert!(curve.contains(FAIL) && curve.contains(PASS));
        let empty = latency_curve(&[], None, None);
        assert!(empty.contains("0 cases"));
        let h = histogram(&[("≤16".into(), 3), ("&".into(), 0)], "lengths");
        assert!(h.contains(">3<") && h.contains("&amp;"));
    }
}
