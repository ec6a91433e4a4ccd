//! OTLP/HTTP receivers.
pub fn router() {}
pub fn serve_http() {}
