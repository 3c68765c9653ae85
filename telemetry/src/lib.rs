//! OpenTelemetry for Allot's processes, set up once per process:
//!
//! - **Metrics** go through the `opentelemetry` API (global meter) and are served
//!   as Prometheus text by [`Telemetry::render`], for a `/metrics` route. Names are
//!   Prometheus names already (`allot_nodes`, `DCGM_FI_DEV_GPU_TEMP`); a histogram
//!   with unit `s` gains `_seconds`, a counter `_total`.
//! - **Traces** are exported over OTLP/gRPC when an endpoint is given, batched on
//!   a background thread. Without one, spans are not recorded at all.
//! - **Trace context** crosses process boundaries as a W3C `traceparent` string
//!   ([`traceparent`], [`context_from`]): in gRPC metadata from clients, and in
//!   the assignment events the broker sends to node daemons.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, global};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use opentelemetry;

/// Bucket boundaries (seconds) for latency histograms: 100 µs to 30 s.
pub const LATENCY_BUCKETS: [f64; 17] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// This process's telemetry pipelines; dropping it does not stop them (call
/// [`Telemetry::shutdown`] to flush spans on the way out).
#[derive(Debug)]
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracer: Option<SdkTracerProvider>,
}

/// Sets up metrics and, when `otlp_endpoint` is given (like
/// `http://127.0.0.1:4317`), traces for `service`; installs them as the
/// process's global providers. Must run inside a Tokio runtime (the OTLP
/// exporter's channel lives there).
pub fn init(service: &'static str, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let resource = Resource::builder().with_service_name(service).build();
    let registry = prometheus::Registry::new();
    let exporter = prometheus_exporter(&registry)?;
    let meters = SdkMeterProvider::builder().with_reader(exporter).with_resource(resource.clone()).build();
    global::set_meter_provider(meters.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = match otlp_endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|error| format!("--otlp-endpoint {endpoint}: {error}"))?;
            let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
            global::set_tracer_provider(provider.clone());
            Some(provider)
        }
        None => None,
    };
    Ok(Telemetry { registry, meters, tracer })
}

/// The Prometheus exporter into `registry`: names as given, no scope or target labels.
fn prometheus_exporter(
    registry: &prometheus::Registry,
) -> Result<opentelemetry_prometheus::PrometheusExporter, String> {
    opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        .scope_info_enabled(false)
        .build()
        .map_err(|error| format!("cannot set up the metrics exporter: {error}"))
}

impl Telemetry {
    /// Every metric as Prometheus text (exposition format 0.0.4).
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        if let Err(error) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# metrics could not be encoded: {error}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Whether spans are exported.
    pub fn traces(&self) -> bool {
        self.tracer.is_some()
    }

    /// Sends the spans still buffered and stops the pipelines.
    pub fn shutdown(&self) {
        if let Some(tracer) = &self.tracer {
            let _ = tracer.force_flush();
            let _ = tracer.shutdown();
        }
        let _ = self.meters.shutdown();
    }
}

/// The W3C `traceparent` of the span in `cx`, if it is sampled and valid.
pub fn traceparent(cx: &Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// A context whose remote parent is `traceparent` (an empty context when it
/// is missing or malformed: a bad header starts a new trace, it fails nothing).
pub fn context_from(traceparent: Option<&str>) -> Context {
    let Some(value) = traceparent.filter(|value| !value.is_empty()) else { return Context::new() };
    let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_owned(), value.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn trace_context_survives_a_round_trip_and_bad_headers_start_over() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(span);
        let header = traceparent(&cx).expect("a header");
        assert_eq!(header, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let back = context_from(Some(&header));
        assert_eq!(back.span().span_context().trace_id(), cx.span().span_context().trace_id());
        for bad in ["", "00-zz-00f067aa0ba902b7-01", "garbage"] {
            assert!(!context_from(Some(bad)).span().span_context().is_valid(), "{bad:?}");
        }
        assert_eq!(traceparent(&Context::new()), None);
    }

    #[test]
    fn metrics_render_as_prometheus_text_with_histograms() {
        let registry = prometheus::Registry::new();
        let exporter = prometheus_exporter(&registry).expect("exporter");
        let meters = SdkMeterProvider::builder().with_reader(exporter).build();
        let telemetry = Telemetry { registry, meters: meters.clone(), tracer: None };
        use opentelemetry::metrics::MeterProvider;
        let meter = meters.meter("test");
        let histogram =
            meter.f64_histogram("allot_test_duration").with_unit("s").with_boundaries(LATENCY_BUCKETS.to_vec()).build();
        histogram.record(0.003, &[opentelemetry::KeyValue::new("rpc", "Create")]);
        let text = telemetry.render();
        assert!(text.contains("# TYPE allot_test_duration_seconds histogram"), "{text}");
        assert!(text.contains("allot_test_duration_seconds_bucket{rpc=\"Create\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("allot_test_duration_seconds_bucket{rpc=\"Create\",le=\"0.0025\"} 0"), "{text}");
    }
}
