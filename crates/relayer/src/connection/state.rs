//! `ConnState`: the stream's lifecycle states as `/debug/actors`, `/health`
//! (`grpc.state`) and the `consonant_relayer_connection_state` gauge show
//! them.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Idle,
    Connecting,
    Handshaking,
    Streaming,
    Backoff,
    BreakerOpen,
    HalfOpen,
    Draining,
}

impl ConnState {
    pub const ALL: [&'static str; 8] = [
        "Idle",
        "Connecting",
        "Handshaking",
        "Streaming",
        "Backoff",
        "BreakerOpen",
        "HalfOpen",
        "Draining",
    ];

    pub fn name(&self) -> &'static str {
        Self::ALL[*self as usize]
    }
}
