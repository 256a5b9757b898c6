//! One classification for every failure (pingora style): where it came from and what
//! would fix it. Transports turn it into HTTP or exit codes; nothing else decides that.

/// Which party failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The authorization server (discovery, registration, token, revocation).
    AuthorizationServer,
    /// The upstream MCP server.
    UpstreamMcp,
    /// The caller's input or credential.
    Caller,
    /// Latchkey's own configuration or policy (an egress-guard refusal, a missing key).
    Configuration,
    /// A bug or an impossible state inside Latchkey.
    Internal,
}

/// What would make the operation succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// The user must consent again (a new authorization-code flow).
    Reconsent,
    /// The user must consent again with more scopes.
    ScopeUpgrade,
    /// The same request may succeed later (network, 5xx, rate limit).
    Retry,
    /// An operator must change configuration; retrying will not help.
    Reconfigure,
    /// The caller must change its request.
    FixRequest,
}

impl Remedy {
    /// Whether an automatic retry of the same request can help.
    pub fn is_retryable(self) -> bool {
        matches!(self, Remedy::Retry)
    }
}
