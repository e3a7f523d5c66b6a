//! The Grafana dashboard (`contrib/grafana/horizon.json`) queries only metrics a real node
//! serves: every metric name in every panel's expression must be a family in `/metrics` of a
//! `horizon serve` with webhooks on.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::webhooks::Node;
use serde_json::Value;

/// Every `horizon_*` name in a PromQL expression, histogram series named by their family.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("horizon_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_exists() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/grafana/horizon.json"
    ))
    .expect("the dashboard file");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut wanted = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "ids are unique"
        );
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        for target in panel["targets"].as_array().into_iter().flatten() {
            wanted.extend(metric_names(
                target["expr"].as_str().expect("an expression"),
            ));
        }
    }
    assert!(
        wanted.len() >= 30,
        "the dashboard covers the metrics: {wanted:?}"
    );

    let dir = std::env::temp_dir().join(format!("horizon-dash-{}", horizon::ids::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let node = Node::start_in(&dir, &[]);
    let (status, metrics) = common::http(node.api, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let served: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = wanted.difference(&served).collect();
    assert!(missing.is_empty(), "queried but not served: {missing:?}");
    // And the other way round: every family served is on the dashboard.
    let unused: Vec<&String> = served.difference(&wanted).collect();
    assert!(
        unused.is_empty(),
        "served but not on the dashboard: {unused:?}"
    );
    drop(node);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn docs_list_every_panel_of_the_dashboard() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/contrib/grafana/horizon.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let docs = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            docs.contains(&format!("{title}:")) || docs.contains(&format!("**{title}**")),
            "docs/metrics.md does not list the panel `{title}`"
        );
    }
}
