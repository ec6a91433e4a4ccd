//! W3C trace-context between the protocol's `TraceContext` message and an
//! OpenTelemetry [`Context`], through the SDK's `TraceContextPropagator`
//! (parsing and formatting `traceparent`/`tracestate` is its job, not ours).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::proto::TraceContext;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

struct Carrier<'a>(&'a TraceContext);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            TRACEPARENT => &self.0.traceparent,
            TRACESTATE => &self.0.tracestate,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

struct Sink(TraceContext);

impl Injector for Sink {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = value,
            TRACESTATE => self.0.tracestate = value,
            _ => {}
        }
    }
}

/// The remote parent a command's trace context names; an empty context
/// when there is none or it does not parse (a new trace then starts).
pub fn extract(trace: Option<&TraceContext>) -> Context {
    match trace {
        Some(trace) => TraceContextPropagator::new().extract(&Carrier(trace)),
        None => Context::new(),
    }
}

/// `context`'s active span as a protocol `TraceContext`; `None` when it has
/// no valid span.
pub fn inject(context: &Context) -> Option<TraceContext> {
    let mut sink = Sink(TraceContext::default());
    TraceContextPropagator::new().inject_context(context, &mut sink);
    (!sink.0.traceparent.is_empty()).then_some(sink.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    fn trace(traceparent: &str, tracestate: &str) -> TraceContext {
        TraceContext {
            traceparent: traceparent.into(),
            tracestate: tracestate.into(),
        }
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_traceparent_and_tracestate() {
        let incoming = trace(PARENT, "vendor=abc");
        let cx = extract(Some(&incoming));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(inject(&cx), Some(incoming));
    }

    #[test]
    fn missing_or_malformed_context_is_no_parent() {
        for bad in [None, Some(trace("", "")), Some(trace("00-zz-yy-01", ""))] {
            let cx = extract(bad.as_ref());
            assert!(!cx.span().span_context().is_valid(), "{bad:?}");
            assert_eq!(inject(&cx), None);
        }
    }
}
