//! Name resolution with the policy applied at connection time (R-SEC-9): the addresses
//! reqwest connects to are exactly the ones that were classified.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::EgressConfig;
use crate::policy::{DenyReason, UrlSource, classify_ip, is_loopback_ip, must_resolve_to_loopback};

/// Resolves host names. Injected so tests can play a rebinding DNS server.
#[async_trait::async_trait]
pub trait NameResolver: Send + Sync + fmt::Debug {
    /// All addresses of `host`. The port of the answers is ignored: the URL decides it.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`tokio::net::lookup_host`, i.e. `getaddrinfo`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl NameResolver for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The refusal a guarded resolution returns. reqwest wraps it; `crate::map_err` finds it
/// again in the error chain and turns it into `EgressError::AddressDenied`.
#[derive(Debug)]
pub(crate) struct Denied {
    pub(crate) host: String,
    pub(crate) reason: DenyReason,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves to a {}", self.host, self.reason)
    }
}

impl std::error::Error for Denied {}

/// reqwest's resolver hook: resolve once, classify every address, hand back exactly the
/// checked addresses. reqwest never resolves the name again, so an answer that changes
/// between the check and the connection (DNS rebinding) cannot slip through.
#[derive(Debug)]
pub(crate) struct GuardedResolve {
    pub(crate) resolver: Arc<dyn NameResolver>,
    pub(crate) source: UrlSource,
    pub(crate) cfg: Arc<EgressConfig>,
}

impl reqwest::dns::Resolve for GuardedResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let resolver = self.resolver.clone();
        let cfg = self.cfg.clone();
        let source = self.source;
        Box::pin(async move {
            let addrs = guarded_addrs(&*resolver, &host, source, &cfg).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Resolves `host` once and classifies every address; exactly those addresses, or the
/// refusal. Shared by reqwest's hook and the proxy's hop ([`crate::hop`]).
pub(crate) async fn guarded_addrs(
    resolver: &dyn NameResolver,
    host: &str,
    source: UrlSource,
    cfg: &EgressConfig,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let mut addrs = resolver.resolve(host, 0).await?;
    if addrs.is_empty() {
        return Err(format!("{host}: no addresses").into());
    }
    // One denied address fails the whole name: connecting to "the good one" would
    // leave the choice to the attacker's ordering and to fallback on failure. A
    // `localhost` name (the only names plain http may reach) must resolve to
    // loopback addresses only.
    let loopback_only = must_resolve_to_loopback(host);
    for a in &mut addrs {
        let verdict = classify_ip(a.ip(), source, cfg).and_then(|()| {
            if loopback_only && !is_loopback_ip(a.ip()) {
                Err(DenyReason::NotLoopback)
            } else {
                Ok(())
            }
        });
        if let Err(reason) = verdict {
            tracing::debug!(event = "egress.address_denied", host = %host, %reason);
            return Err(Denied {
                host: host.to_owned(),
                reason,
            }
            .into());
        }
        // Port 0 tells hyper to use the URL's port (explicit or scheme default)
        // instead of whatever the resolver put there.
        a.set_port(0);
    }
    Ok(addrs)
}

/// A guard refusal anywhere in `e`'s causes, as the egress error.
pub(crate) fn find_denied(e: &(dyn std::error::Error + 'static)) -> Option<crate::EgressError> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(d) = c.downcast_ref::<Denied>() {
            return Some(crate::EgressError::AddressDenied {
                host: d.host.clone(),
                reason: d.reason,
            });
        }
        cause = c.source();
    }
    None
}
