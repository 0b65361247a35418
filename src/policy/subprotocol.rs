//! Subprotocol allow-list: what the backend is offered, and whether one is required.

/// `subprotocols = [...]` and `require_subprotocol`.
#[derive(Debug, Clone, Default)]
pub struct SubprotocolPolicy {
    /// `None`: every offer passes to the backend.
    pub allowed: Option<Vec<String>>,
    /// Refuse a handshake that offers nothing allowed.
    pub required: bool,
}

impl SubprotocolPolicy {
    /// Passes every offer unchanged and requires none.
    pub fn is_open(&self) -> bool {
        let SubprotocolPolicy { allowed, required } = self;
        allowed.is_none() && !required
    }

    /// The offers that may reach the backend, in the client's order. `Err(reason)` when one
    /// is required and none is left.
    pub fn filter(&self, offered: Vec<String>) -> Result<Vec<String>, String> {
        let kept: Vec<String> = match &self.allowed {
            None => offered.clone(),
            Some(allowed) => offered
                .iter()
                .filter(|p| allowed.iter().any(|a| a == *p))
                .cloned()
                .collect(),
        };
        if self.required && kept.is_empty() {
            let allowed = self.allowed.as_deref().unwrap_or_default().join(", ");
            return Err(if offered.is_empty() {
                format!("no subprotocol offered; this route requires one of: {allowed}")
            } else {
                format!(
                    "none of the offered subprotocols ({}) is allowed; this route requires one of: {allowed}",
                    shown_offers(&offered)
                )
            });
        }
        Ok(kept)
    }
}

/// The offers as a refusal may show them (in its body and the log): an entry that may carry
/// a token (`bearer.…`, the one after `access_token` or `bearer`, or anything long) is
/// replaced by a placeholder.
fn shown_offers(offered: &[String]) -> String {
    let mut out = Vec::with_capacity(offered.len());
    let mut after_marker = false;
    for p in offered {
        out.push(if after_marker {
            hidden(p)
        } else {
            shown(p).into_owned()
        });
        after_marker = super::token::is_token_marker(p);
    }
    out.join(", ")
}

/// A subprotocol as a record may show it: one that may be a token (`bearer.…`, or anything
/// long) as a placeholder. Also the session's chosen subprotocol in the access log and the
/// admin API: a backend that echoes the first entry offered would otherwise have a client's
/// `bearer.<token>` logged, on a route that does not read tokens from the offer.
pub fn shown(p: &str) -> std::borrow::Cow<'_, str> {
    if super::token::bearer_entry(p).is_some() || p.len() > 40 {
        hidden(p).into()
    } else {
        p.into()
    }
}

fn hidden(p: &str) -> String {
    format!("<{} characters hidden>", p.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filters_in_client_order_and_requires() {
        let p = SubprotocolPolicy {
            allowed: Some(v(&["chat", "superchat"])),
            required: true,
        };
        assert_eq!(
            p.filter(v(&["x", "superchat", "chat"])).unwrap(),
            v(&["superchat", "chat"])
        );
        assert!(
            p.filter(v(&["x"]))
                .unwrap_err()
                .contains("none of the offered")
        );
        assert!(
            p.filter(v(&[]))
                .unwrap_err()
                .contains("no subprotocol offered")
        );
        // A token offered as a subprotocol is never echoed.
        let e = p
            .filter(v(&[
                "bearer.eyJhbGciOiJIUzI1NiJ9.e30.sig",
                "access_token",
                "abc.def.ghi",
                "x",
            ]))
            .unwrap_err();
        assert!(!e.contains("eyJ") && !e.contains("abc.def"), "{e}");
        assert!(e.contains("access_token, <11 characters hidden>, x"), "{e}");
        let open = SubprotocolPolicy::default();
        assert_eq!(open.filter(v(&["x"])).unwrap(), v(&["x"]));
    }
}
