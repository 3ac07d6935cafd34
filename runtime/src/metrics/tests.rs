use super::*;
use crate::invoke::FailureReason;
use crate::manifest::ComponentName;

fn workload(app: &str, component: &str) -> WorkloadId {
    WorkloadId::new(
        ComponentName::try_from(app.to_string()).unwrap(),
        ComponentName::try_from(component.to_string()).unwrap(),
    )
}

fn gate() -> Arc<ConcurrencyGate> {
    Arc::new(ConcurrencyGate::new(4, 4))
}

fn scrape(metrics: &Arc<RuntimeMetrics>) -> String {
    let mut registry = Registry::with_prefix("skiff");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

#[test]
fn every_failure_reason_has_its_own_label_value() {
    for reason in FailureReason::ALL {
        assert!(series::reason_is_known(reason), "{reason:?}");
    }
}

#[test]
fn requests_show_by_class_and_reason_once_a_component_served() {
    let metrics = Arc::new(RuntimeMetrics::default());
    let gate = gate();
    let shop = metrics.component(&workload("shop", "web"), &gate);
    let _idle = metrics.component(&workload("idle", "web"), &gate);
    shop.record_request(200, None, Duration::from_millis(3));
    shop.record_request(200, None, Duration::from_millis(3));
    shop.record_request(503, Some("overloaded"), Duration::from_micros(20));
    shop.record_instance();
    shop.record_outbound(OutboundOutcome::Denied);
    let text = scrape(&metrics);
    assert!(
        text.contains(r#"skiff_requests_total{app="shop",component="web",class="2xx"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"skiff_requests_total{app="shop",component="web",class="5xx",reason="overloaded"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"skiff_request_duration_seconds_bucket{le="0.005",app="shop",component="web"} 3"#
    ));
    assert!(text.contains(r#"skiff_instances_created_total{app="shop",component="web"} 1"#));
    assert!(text.contains(
        r#"skiff_outbound_requests_total{app="shop",component="web",outcome="denied"} 1"#
    ));
    assert!(text.contains(r#"skiff_requests_in_flight{app="shop",component="web"} 0"#));
    // An app that never served adds nothing.
    assert!(!text.contains(r#"app="idle""#), "{text}");
}

#[test]
fn versions_share_series_which_go_when_the_last_is_unloaded() {
    let metrics = Arc::new(RuntimeMetrics::default());
    let (old_gate, new_gate) = (gate(), gate());
    let old = metrics.component(&workload("shop", "web"), &old_gate);
    let new = metrics.component(&workload("shop", "web"), &new_gate);
    assert!(Arc::ptr_eq(&old, &new));
    old.record_request(200, None, Duration::ZERO);
    drop(old);
    assert!(scrape(&metrics).contains(r#"app="shop""#));
    drop(new);
    assert!(!scrape(&metrics).contains(r#"app="shop""#));
}

#[test]
fn in_flight_and_queued_sum_the_versions_gates() {
    let metrics = Arc::new(RuntimeMetrics::default());
    let (one, two) = (
        Arc::new(ConcurrencyGate::new(1, 4)),
        Arc::new(ConcurrencyGate::new(1, 4)),
    );
    let series = metrics.component(&workload("shop", "web"), &one);
    metrics.component(&workload("shop", "web"), &two);
    series.record_request(200, None, Duration::ZERO);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (_a, _b) =
        runtime.block_on(async { (one.enter().await.unwrap(), two.enter().await.unwrap()) });
    // A third request waits in `one`'s queue.
    let waiting = {
        let one = one.clone();
        runtime.spawn(async move { one.enter().await.map(drop) })
    };
    runtime.block_on(async {
        while one.queued() == 0 {
            tokio::task::yield_now().await;
        }
    });
    let text = scrape(&metrics);
    assert!(
        text.contains(r#"skiff_requests_in_flight{app="shop",component="web"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"skiff_requests_queued{app="shop",component="web"} 1"#),
        "{text}"
    );
    waiting.abort();
}

#[test]
fn components_past_the_limit_share_the_other_series() {
    let metrics = Arc::new(RuntimeMetrics::default());
    let gate = gate();
    let held: Vec<_> = (0..MAX_COMPONENT_SERIES)
        .map(|n| metrics.component(&workload(&format!("app{n}"), "web"), &gate))
        .collect();
    let late = metrics.component(&workload("late", "web"), &gate);
    late.record_request(200, None, Duration::ZERO);
    let text = scrape(&metrics);
    assert!(!text.contains(r#"app="late""#), "{text}");
    assert!(
        text.contains(r#"skiff_requests_total{app="_other",component="_other",class="2xx"} 1"#)
    );
    // A component unloaded makes room again.
    drop(held);
    drop(late);
    let again = metrics.component(&workload("late", "web"), &gate);
    again.record_request(200, None, Duration::ZERO);
    assert!(scrape(&metrics).contains(r#"app="late""#));
}

#[test]
fn loads_are_counted_by_cache_result() {
    let metrics = Arc::new(RuntimeMetrics::default());
    metrics.record_load(CacheOutcome::Compiled, Duration::from_millis(400));
    metrics.record_load(CacheOutcome::Hit, Duration::from_millis(4));
    metrics.record_load(CacheOutcome::Hit, Duration::from_millis(4));
    let text = scrape(&metrics);
    assert!(
        text.contains(r#"skiff_compile_cache_lookups_total{result="hit"} 2"#),
        "{text}"
    );
    assert!(text.contains(r#"skiff_compile_cache_lookups_total{result="miss"} 1"#));
    assert!(text.contains("skiff_component_load_duration_seconds_count 3"));
}

#[test]
fn quantiles_interpolate_within_their_bucket() {
    let mut counts = vec![0; REQUEST_DURATION_BUCKETS.len() + 1];
    assert_eq!(quantile(&counts, 0.5), None);
    // 100 requests between 1 and 2.5 ms (the third bucket).
    counts[2] = 100;
    let p50 = quantile(&counts, 0.5).unwrap();
    assert!((p50 - 0.00175).abs() < 1e-9, "{p50}");
    // One slow one past every bound: p99 stays in the bucket, p100 is
    // the largest bound.
    counts[REQUEST_DURATION_BUCKETS.len()] = 1;
    assert!(quantile(&counts, 0.99).unwrap() <= 0.0025);
    assert_eq!(quantile(&counts, 1.0), Some(60.0));
}
