//! The run's report: a human summary, `report.json`, and `report.html` (inline SVG charts: latency
//! percentiles and throughput over time; no scripts, opens anywhere).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

#[derive(Debug, Default)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub connections: u64,
    pub connected: u64,
    pub failed: u64,
    pub closed: u64,
    pub processes: usize,
    pub accounts: usize,
    pub published: u64,
    pub publish_seconds: f64,
    pub nacked: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Connections that received none of their events.
    pub silent: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub cross_tenant: u64,
    pub commands: u64,
    pub command_errors: u64,
    pub connect_seconds: f64,
    pub connect_retries: u64,
    pub gateway_pids: Vec<u32>,
    pub gateway_cpu_seconds: f64,
    /// The gateway's and the broker's processes, each once.
    pub system_pids: Vec<u32>,
    pub system_cpu_seconds: f64,
    pub gateway_rss_before: u64,
    pub gateway_rss_connected: u64,
    pub run_seconds: f64,
    pub latency: Option<Histogram<u64>>,
    pub connect_latency: Option<Histogram<u64>>,
    pub command_latency: Option<Histogram<u64>>,
    /// Events received per 100 ms, from the first publish.
    pub timeline: Vec<u64>,
    pub errors: Vec<String>,
}

fn percentiles(h: &Option<Histogram<u64>>) -> Vec<(&'static str, f64)> {
    let Some(h) = h.as_ref().filter(|h| !h.is_empty()) else {
        return Vec::new();
    };
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)]
        .into_iter()
        .map(|(name, q)| (name, h.value_at_quantile(q / 100.0) as f64 / 1000.0))
        .chain([("max", h.max() as f64 / 1000.0)])
        .collect()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Report {
    pub fn deliveries_per_cpu_second(&self) -> Option<f64> {
        (self.gateway_cpu_seconds > 0.0 && self.received > 0)
            .then(|| self.received as f64 / self.gateway_cpu_seconds)
    }

    /// Deliveries per CPU-second of the gateway and the broker together: the figure that
    /// compares Horizon (broker -> Horizon -> clients) with Web-MQTT (the broker is the gateway).
    pub fn deliveries_per_system_cpu_second(&self) -> Option<f64> {
        (self.system_cpu_seconds > 0.0 && self.received > 0)
            .then(|| self.received as f64 / self.system_cpu_seconds)
    }

    pub fn bytes_per_connection(&self) -> Option<f64> {
        (self.connected > 0 && self.gateway_rss_connected > 0).then(|| {
            self.gateway_rss_connected
                .saturating_sub(self.gateway_rss_before) as f64
                / self.connected as f64
        })
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== {} against {} ({} process(es), {} accounts)",
            self.scenario, self.target, self.processes, self.accounts
        );
        let _ = writeln!(
            out,
            "connections: {} of {} connected in {:.1}s ({:.0}/s), {} failed, {} closed by the server, {} connect retries",
            self.connected,
            self.connections,
            self.connect_seconds,
            self.connected as f64 / self.connect_seconds.max(1e-9),
            self.failed,
            self.closed,
            self.connect_retries
        );
        if let Some(b) = self.bytes_per_connection() {
            let _ = writeln!(
                out,
                "gateway memory: {:.0} bytes RSS per connection ({} -> {} bytes)",
                b, self.gateway_rss_before, self.gateway_rss_connected
            );
        }
        if self.published > 0 {
            let _ = writeln!(
                out,
                "published: {} events in {:.1}s ({:.0}/s), {} not confirmed",
                self.published,
                self.publish_seconds,
                self.published as f64 / self.publish_seconds.max(1e-9),
                self.nacked
            );
            let _ = writeln!(
                out,
                "received: {} of {} expected; lost {} ({} connections got nothing), duplicated {}, reordered {}, cross-tenant {}",
                self.received, self.expected, self.lost, self.silent, self.duplicated, self.reordered, self.cross_tenant
            );
            let _ = writeln!(
                out,
                "deliveries: {:.0}/s over the run",
                self.received as f64 / self.run_seconds.max(1e-9)
            );
        }
        if let Some(d) = self.deliveries_per_cpu_second() {
            let _ = writeln!(
                out,
                "gateway CPU: {:.2}s -> {:.0} deliveries per CPU-second",
                self.gateway_cpu_seconds, d
            );
        }
        if let Some(d) = self.deliveries_per_system_cpu_second() {
            let _ = writeln!(
                out,
                "system CPU (gateway + broker): {:.2}s -> {:.0} deliveries per CPU-second",
                self.system_cpu_seconds, d
            );
        }
        for (name, h) in [
            ("latency (publish -> receive)", &self.latency),
            ("connect + upgrade", &self.connect_latency),
            ("command reply", &self.command_latency),
        ] {
            let p = percentiles(h);
            if !p.is_empty() {
                let list: Vec<String> = p.iter().map(|(n, v)| format!("{n} {v:.3} ms")).collect();
                let _ = writeln!(out, "{name}: {}", list.join(", "));
            }
        }
        if self.commands > 0 {
            let _ = writeln!(
                out,
                "commands: {} ({} errors)",
                self.commands, self.command_errors
            );
        }
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }

    pub fn json(&self) -> String {
        let hist = |h: &Option<Histogram<u64>>| {
            let p: Vec<String> = percentiles(h)
                .iter()
                .map(|(n, v)| format!("{}:{v}", json_str(n)))
                .collect();
            format!("{{{}}}", p.join(","))
        };
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.1}"));
        let errors: Vec<String> = self.errors.iter().map(|e| json_str(e)).collect();
        let timeline: Vec<String> = self.timeline.iter().map(u64::to_string).collect();
        format!(
            "{{\"scenario\":{},\"target\":{},\"processes\":{},\"accounts\":{},\"connections\":{},\"connected\":{},\"failed\":{},\"closed\":{},\
\"connect_seconds\":{:.3},\"connect_retries\":{},\"published\":{},\"publish_seconds\":{:.3},\"not_confirmed\":{},\"expected\":{},\"received\":{},\"lost\":{},\"silent_connections\":{},\
\"duplicated\":{},\"reordered\":{},\"cross_tenant\":{},\"commands\":{},\"command_errors\":{},\"gateway_pids\":{:?},\"gateway_cpu_seconds\":{:.3},\
\"deliveries_per_cpu_second\":{},\"system_pids\":{:?},\"system_cpu_seconds\":{:.3},\"deliveries_per_system_cpu_second\":{},\"gateway_rss_before\":{},\"gateway_rss_connected\":{},\"bytes_per_connection\":{},\
\"latency_ms\":{},\"connect_latency_ms\":{},\"command_latency_ms\":{},\"timeline_per_100ms\":[{}],\"errors\":[{}]}}",
            json_str(&self.scenario),
            json_str(&self.target),
            self.processes,
            self.accounts,
            self.connections,
            self.connected,
            self.failed,
            self.closed,
            self.connect_seconds,
            self.connect_retries,
            self.published,
            self.publish_seconds,
            self.nacked,
            self.expected,
            self.received,
            self.lost,
            self.silent,
            self.duplicated,
            self.reordered,
            self.cross_tenant,
            self.commands,
            self.command_errors,
            self.gateway_pids,
            self.gateway_cpu_seconds,
            opt(self.deliveries_per_cpu_second()),
            self.system_pids,
            self.system_cpu_seconds,
            opt(self.deliveries_per_system_cpu_second()),
            self.gateway_rss_before,
            self.gateway_rss_connected,
            opt(self.bytes_per_connection()),
            hist(&self.latency),
            hist(&self.connect_latency),
            hist(&self.command_latency),
            timeline.join(","),
            errors.join(",")
        )
    }

    pub fn html(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>horizon-loadtest: {} / {}</title>\
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:980px}}pre{{background:#f4f4f4;padding:1em;white-space:pre-wrap}}\
svg{{background:#fff;border:1px solid #ddd;margin:1em 0}}</style></head><body>\
<h1>{} against {}</h1><pre>{}</pre>",
            self.scenario,
            self.target,
            self.scenario,
            self.target,
            html_escape(&self.summary())
        );
        if let Some(h) = self.latency.as_ref().filter(|h| !h.is_empty()) {
            out.push_str("<h2>Latency distribution (publish -> receive)</h2>");
            out.push_str(&latency_chart(h));
        }
        if let Some(h) = self.connect_latency.as_ref().filter(|h| !h.is_empty()) {
            out.push_str("<h2>Connect + upgrade latency</h2>");
            out.push_str(&latency_chart(h));
        }
        if !self.timeline.is_empty() {
            out.push_str("<h2>Deliveries per second over time</h2>");
            out.push_str(&throughput_chart(&self.timeline));
        }
        out.push_str("</body></html>\n");
        out
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const W: f64 = 900.0;
const H: f64 = 300.0;
const PAD: f64 = 80.0;

/// Latency (ms, log scale) against percentile (0 .. 99.99, as `-log10(1-q)`).
fn latency_chart(h: &Histogram<u64>) -> String {
    let quantiles: Vec<f64> = (0..=400)
        .map(|i| 1.0 - 10f64.powf(-(i as f64) / 100.0))
        .collect();
    let values: Vec<f64> = quantiles
        .iter()
        .map(|q| (h.value_at_quantile(q.min(0.9999)) as f64 / 1000.0).max(0.001))
        .collect();
    let (lo, hi) = (
        values
            .iter()
            .cloned()
            .fold(f64::MAX, f64::min)
            .log10()
            .floor(),
        values
            .iter()
            .cloned()
            .fold(0.0, f64::max)
            .log10()
            .ceil()
            .max(0.0),
    );
    let hi = if hi <= lo { lo + 1.0 } else { hi };
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / 400.0;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * (v.log10() - lo) / (hi - lo);
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
        .collect();
    let mut svg =
        format!("<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">");
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%"].iter().enumerate() {
        let xi = x(i * 100);
        let _ = write!(svg, "<line x1=\"{xi}\" y1=\"{}\" x2=\"{xi}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{xi}\" y=\"{}\" text-anchor=\"middle\">{label}</text>", PAD, H - PAD, H - PAD + 18.0);
    }
    let mut decade = lo;
    while decade <= hi {
        let v = 10f64.powf(decade);
        let yi = y(v);
        let _ = write!(svg, "<line x1=\"{PAD}\" y1=\"{yi}\" x2=\"{}\" y2=\"{yi}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} ms</text>", W - PAD, PAD - 6.0, yi + 4.0, v);
        decade += 1.0;
    }
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"2\" points=\"{}\"/></svg>",
        points.join(" ")
    );
    svg
}

/// Deliveries per second (100 ms buckets, scaled) over time.
fn throughput_chart(timeline: &[u64]) -> String {
    let max = timeline.iter().copied().max().unwrap_or(1).max(1) as f64 * 10.0;
    let n = timeline.len().max(2) as f64;
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1.0);
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / max;
    let points: Vec<String> = timeline
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v as f64 * 10.0)))
        .collect();
    let mut svg =
        format!("<svg width=\"{W}\" height=\"{H}\" xmlns=\"http://www.w3.org/2000/svg\">");
    for step in 0..=4 {
        let v = max * step as f64 / 4.0;
        let yi = y(v);
        let _ = write!(svg, "<line x1=\"{PAD}\" y1=\"{yi}\" x2=\"{}\" y2=\"{yi}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}/s</text>", W - PAD, PAD - 6.0, yi + 4.0, v);
    }
    let seconds = timeline.len() as f64 / 10.0;
    for step in 0..=4 {
        let i = ((timeline.len().saturating_sub(1)) as f64 * step as f64 / 4.0) as usize;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.1}s</text>",
            x(i),
            H - PAD + 18.0,
            seconds * step as f64 / 4.0
        );
    }
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#2e7d32\" stroke-width=\"2\" points=\"{}\"/></svg>",
        points.join(" ")
    );
    svg
}
